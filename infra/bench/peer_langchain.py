"""LangChain's indexing API as a peer of tierflow's ingest: ``index()`` with a ``SQLRecordManager`` (SQLite)
into a FAISS vector store (``IndexFlatIP``, normalised embeddings), one process per phase.

As LangChain's indexing guide sets it up: documents carry their id in ``metadata["source"]``
(``source_id_key``), ``cleanup="incremental"`` removes a changed document's old vector, the record manager
skips unchanged content. With ``--window-tokens`` the documents are first cut by LangChain's
``SentenceTransformersTokenTextSplitter`` (the model's own tokenizer), every window keeping its document's
``source``, so ``index()`` replaces all windows of a changed document; cleanup is then ``scoped_full``, which
``index()``'s documentation advises when one source's chunks span batches (``incremental`` would delete a
source's windows of the next batch before reaching them, and embed them again). Timed: opening the record manager and loading the saved store, ``index()``, and
``FAISS.save_local`` (fsynced). Runs in the bench venv (infra/bench/peers-venv.sh).

    .bench-venv/bin/python infra/bench/peer_langchain.py --corpus corpus.jsonl --work DIR --phase first \
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

NAMESPACE = "faiss/bench-peers"


def main() -> None:
    args = parse_args(__doc__ or "")
    import faiss
    from langchain_classic.indexes import SQLRecordManager
    from langchain_community.docstore.in_memory import InMemoryDocstore
    from langchain_community.vectorstores import FAISS
    from langchain_community.vectorstores.utils import DistanceStrategy
    from langchain_core.documents import Document
    from langchain_core.indexing import index
    from langchain_huggingface import HuggingFaceEmbeddings

    embeddings = HuggingFaceEmbeddings(
        model_name=str(args.model),
        encode_kwargs={"batch_size": args.batch_size, "normalize_embeddings": True},
    )
    dim = len(embeddings.embed_documents(warm_up_texts(args.corpus, args.batch_size))[0])
    store_dir, db = args.work / "faiss", args.work / "records.sqlite"
    splitter = None
    if args.window_tokens:
        from langchain_text_splitters import SentenceTransformersTokenTextSplitter

        splitter = SentenceTransformersTokenTextSplitter(
            model_name=str(args.model),
            tokens_per_chunk=window_text_tokens(args),
            chunk_overlap=args.window_overlap,
        )

    watch = Stopwatch()
    with watch.span("read"):
        docs = [
            Document(page_content=text, metadata={"source": doc_id})
            for doc_id, text in read_corpus(args.corpus)
        ]
    n_docs = len(docs)
    if splitter is not None:
        with watch.span("split"):
            docs = splitter.split_documents(docs)
    with watch.span("load"):
        record_manager = SQLRecordManager(NAMESPACE, db_url=f"sqlite:///{db}")
        if args.phase == "first":
            record_manager.create_schema()
            store = FAISS(
                embedding_function=embeddings,
                index=faiss.IndexFlatIP(dim),
                docstore=InMemoryDocstore(),
                index_to_docstore_id={},
                distance_strategy=DistanceStrategy.MAX_INNER_PRODUCT,
            )
        else:
            store = FAISS.load_local(
                str(store_dir),
                embeddings,
                allow_dangerous_deserialization=True,  # our own pickle, written by the previous phase
                distance_strategy=DistanceStrategy.MAX_INNER_PRODUCT,
            )
    with watch.span("ingest"):
        result = index(
            docs,
            record_manager,
            store,
            cleanup="scoped_full" if splitter is not None else "incremental",
            source_id_key="source",
            batch_size=args.batch_size,
            key_encoder="sha256",
        )
    with watch.span("persist"):
        store.save_local(str(store_dir))
        fsync_tree(store_dir, db)  # SQLite already fsynced each commit; this is the FAISS files
    emit(
        "langchain",
        args.phase,
        n_docs,
        watch,
        embedded=result["num_added"] + result["num_updated"],
        skipped=result["num_skipped"],
        deleted=result["num_deleted"],
        vectors=int(store.index.ntotal),
        chunks=len(docs),
        chunks_by_doc=dict(Counter(doc.metadata["source"] for doc in docs)),
        device=str(embeddings._client.device),
        versions=versions(
            "langchain-core",
            "langchain-classic",
            "langchain-community",
            "langchain-huggingface",
            "sqlalchemy",
            "sentence-transformers",
            "torch",
            "faiss-cpu",
        ),
    )


if __name__ == "__main__":
    main()
