"""The ingest service: validates shoppers' events and stores them."""
