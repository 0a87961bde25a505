"""Infrastructure both processes share: errors, devices, torchrun, the model hub, safe weight files,
atomic file writes and provenance. Nothing here knows about teachers, stores or methods."""
