"""Model engines behind small interfaces; a stage never knows which engine runs it.

- :mod:`.generation`: the ``TextGenerator`` interface, its configs; engines in
  :mod:`.transformers_engine`, :mod:`.vllm_engine`, :mod:`.subprocess_engine`,
  :mod:`.openai_engine` (a server speaking the OpenAI API);
  :func:`.factory.make_generator` builds the configured one
- :mod:`.nli`: ``NliScorer`` (``score(premises, hypotheses) -> [N, 3]`` entail/neutral/contra)
- :mod:`.common`: device/dtype helpers, length buckets, ``run_in_subprocess``

The completer H has its own package, :mod:`pipeline.completer`. Heavy imports (torch,
transformers, vllm) happen when an engine is built, not on import.
"""
