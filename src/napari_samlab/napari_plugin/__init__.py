"""npe2 contributions: reader, writer and sample data (thin wrappers on io/)."""
