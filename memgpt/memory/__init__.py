"""Memory policy: what an agent remembers and how it searches it (core, recall, archival)."""
