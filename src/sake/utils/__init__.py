"""Run plumbing shared by the entry points: resolvers, run directories, metrics, seeding."""
