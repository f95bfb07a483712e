"""The limit of the peer ingest benchmark: bare ``SentenceTransformer.encode`` + ``faiss.IndexFlatIP.add``.

The same texts as the peers, no change tracking: every phase embeds the whole corpus again and rewrites the
index (a full rebuild), which is what ingest costs without a record of what is already indexed.

    python infra/bench/peer_bare.py --corpus corpus.jsonl --work DIR --phase first --model MODEL_DIR
"""

from __future__ import annotations

import numpy as np
from peer_common import Stopwatch, emit, fsync_tree, parse_args, read_corpus, versions, warm_up_texts


def main() -> None:
    args = parse_args(__doc__ or "")
    import faiss
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(args.model))
    model.encode(warm_up_texts(args.corpus, args.batch_size), batch_size=args.batch_size)
    index_path = args.work / "index.faiss"

    watch = Stopwatch()
    with watch.span("read"):
        docs = read_corpus(args.corpus)
    with watch.span("ingest"):
        vectors = model.encode(
            [text for _, text in docs],
            batch_size=args.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
        )
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    with watch.span("persist"):
        faiss.write_index(index, str(index_path))
        fsync_tree(index_path)
    emit(
        "bare",
        args.phase,
        len(docs),
        watch,
        embedded=len(docs),
        vectors=int(index.ntotal),
        device=str(model.device),
        versions=versions("sentence-transformers", "torch", "faiss-cpu"),
    )


if __name__ == "__main__":
    main()
