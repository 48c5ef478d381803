"""Optional adapters from other training libraries to :func:`largestep.track`.

``largestep.integrations.lightning.LargestepLogger`` (a Lightning logger) and
``largestep.integrations.transformers.LargestepCallback`` (a Hugging Face ``TrainerCallback``) turn a
framework's run into a tracked largestep run. Neither library is a dependency of largestep:
each module imports its library when it is imported itself, and says in one line which extra to
install (``largestep[lightning]``, ``largestep[hf]``) when it is missing.
"""
