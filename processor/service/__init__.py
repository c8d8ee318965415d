"""Running members: one process (:mod:`.worker`), ``--workers N`` behind one endpoint
(:mod:`.supervisor`, with the health board of :mod:`.board`), and ``replay-dlq``
(:mod:`.replay`)."""
