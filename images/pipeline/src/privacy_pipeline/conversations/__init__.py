"""The daily conversations job: source schema, PII redaction, the versioned FAISS vector store, synthetic days.

Its stages (``privacy_pipeline.stages.conversations_*``, ``search``) are thin
wiring around these modules, and read and write under the run's
``conversations/`` folder (``layout.py``) and the store prefix
(``vector_store.py``).
"""
