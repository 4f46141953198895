"""One fit of a run: the config turned into prepared components (``inputs``, ``setup``), the explicit loop
(``loop``, ``evaluate``), checkpoints and resume, processes, loaders, the feature cache, tracking and outputs."""
