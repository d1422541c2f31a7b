"""The export service: stored data streamed out as CSV, JSON or XLSX."""
