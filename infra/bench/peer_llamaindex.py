"""LlamaIndex as a peer of tierflow's ingest: an ``IngestionPipeline`` with a ``SimpleDocumentStore`` and
``docstore_strategy=UPSERTS`` into FAISS, one process per phase.

As LlamaIndex's document-management guide sets it up: ``Document(id_=doc id)`` goes straight to the
embedding model (one document, one node), the docstore's hashes skip unchanged documents and upsert changed
ones. With ``--window-tokens`` a ``SentenceSplitter`` (LlamaIndex's default node parser; the model's own
tokenizer counts the tokens) comes first in the transformations, so a document becomes several nodes and an
upsert replaces them all. ``pipeline.persist``/``pipeline.load`` keep the docstore between runs. The vector store is
``FaissMapVectorStore`` over ``IndexIDMap2(IndexFlatIP)``: plain ``FaissVectorStore`` cannot delete, which an
upsert needs. The transformation cache is off (``disable_cache=True``): with a docstore doing the upserts
it only holds a second copy of every embedding; off is the faster setting. Timed: loading the docstore and
the saved store, ``run()``, ``pipeline.persist`` and the store's ``persist`` (fsynced). Runs in the bench
venv (infra/bench/peers-venv.sh).

    .bench-venv/bin/python infra/bench/peer_llamaindex.py --corpus corpus.jsonl --work DIR --phase first \
        --model MODEL_DIR
"""

from __future__ import annotations

from collections import Counter

from peer_common import (
    Stopwatch,
    emit,
    fsync_tree,
    parse_args,
    read_corpus,
    versions,
    warm_up_texts,
    window_text_tokens,
)


def main() -> None:
    args = parse_args(__doc__ or "")
    import faiss
    from llama_index.core import Document
    from llama_index.core.ingestion import DocstoreStrategy, IngestionPipeline
    from llama_index.core.storage.docstore import SimpleDocumentStore
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding
    from llama_index.vector_stores.faiss import FaissMapVectorStore

    embed_model = HuggingFaceEmbedding(
        model_name=str(args.model), embed_batch_size=args.batch_size, normalize=True
    )
    dim = len(embed_model.get_text_embedding_batch(warm_up_texts(args.corpus, args.batch_size))[0])
    pipeline_dir, store_dir = args.work / "pipeline_storage", args.work / "faiss"
    transformations: list = [embed_model]
    splitter = None
    if args.window_tokens:
        from llama_index.core.node_parser import SentenceSplitter
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(args.model / "tokenizer.json"))
        tokenizer.no_truncation()
        tokenizer.no_padding()  # the model's tokenizer.json pads; a count must not
        splitter = SentenceSplitter(
            chunk_size=window_text_tokens(args),
            chunk_overlap=args.window_overlap,
            tokenizer=lambda text: tokenizer.encode(text, add_special_tokens=False).ids,
        )
        transformations.insert(0, splitter)
    store_file = store_dir / "default__vector_store.json"

    watch = Stopwatch()
    with watch.span("read"):
        docs = [Document(text=text, id_=doc_id) for doc_id, text in read_corpus(args.corpus)]
    with watch.span("load"):
        if args.phase == "first":
            vector_store = FaissMapVectorStore(faiss_index=faiss.IndexIDMap2(faiss.IndexFlatIP(dim)))
        else:
            vector_store = FaissMapVectorStore.from_persist_dir(str(store_dir))
        pipeline = IngestionPipeline(
            transformations=transformations,
            docstore=SimpleDocumentStore(),
            vector_store=vector_store,
            docstore_strategy=DocstoreStrategy.UPSERTS,
            disable_cache=True,
        )
        if args.phase != "first":
            pipeline.load(str(pipeline_dir))
    with watch.span("ingest"):
        nodes = pipeline.run(documents=docs)
    with watch.span("persist"):
        pipeline.persist(str(pipeline_dir))
        vector_store.persist(persist_path=str(store_file))
        fsync_tree(pipeline_dir, store_dir)
    # After the timer: the nodes the whole corpus splits into (what the index should hold).
    split = splitter.get_nodes_from_documents(docs) if splitter is not None else docs
    emit(
        "llamaindex",
        args.phase,
        len(docs),
        watch,
        embedded=len(nodes),
        docstore_docs=len(pipeline.docstore.docs) if pipeline.docstore is not None else 0,
        vectors=int(vector_store._faiss_index.ntotal),
        chunks=len(split),
        chunks_by_doc=dict(Counter(node.ref_doc_id or node.id_ for node in split)),
        # documents a search can return: the store maps each FAISS id back to one node id
        findable_docs=len(set(vector_store._faiss_id_to_node_id_map.values())),
        device=str(embed_model._device),
        versions=versions(
            "llama-index-core",
            "llama-index-embeddings-huggingface",
            "llama-index-vector-stores-faiss",
            "sentence-transformers",
            "torch",
            "faiss-cpu",
        ),
    )


if __name__ == "__main__":
    main()
