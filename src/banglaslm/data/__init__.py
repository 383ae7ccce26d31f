"""Data: inputs → normalized documents → a data folder of token bins → training batches."""
