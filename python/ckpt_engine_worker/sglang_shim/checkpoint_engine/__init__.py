"""Stands in for the original checkpoint-engine package inside SGLang, on this project's protocol
(put its parent folder first on PYTHONPATH only for SGLang; see ckpt_engine_worker.sglang)."""
