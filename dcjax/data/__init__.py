"""Data: import (prepare), random-access datasets, grain views (pipeline)."""
