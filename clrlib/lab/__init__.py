"""The lab: the machinery that runs the notebook suite (specs, the run store, plans, the runner)."""
