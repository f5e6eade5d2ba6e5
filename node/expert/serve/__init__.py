"""Serving: the batched inference worker and what feeds it (jobs, prompts, sampling, scoring,
sessions and their KV store, live adapters, the notary), the in-process :class:`LocalExpert`
and the ``/mosaic/infer/1`` and session stream handlers of :class:`ExpertService`.  Uses the
models that ``node.expert.model`` provisions."""
