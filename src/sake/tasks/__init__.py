"""Task functions called by the entry points: `fn(cfg=..., run=...) -> metrics | None`."""
