"""OpenRTB bid-request filter: synthetic logs, features, model, scorer and Triton model (docs/adfilter.md)."""
