"""Fan-out on Ray for sweeps and searches: only the distribution; what each worker runs is the
sweep's and the search's own evaluation code (`pool`: the driver's side, `worker`: the actors)."""
