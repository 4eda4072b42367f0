"""The jail for code an agent writes: the launcher, its confinement and the child runner."""
