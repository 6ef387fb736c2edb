"""OpenRTB bid-request filter: synthetic logs, features, model, scorer and Triton model (docs/adfilter.md)."""
from model_repository.checkout import keep_checkout_root_off_path

keep_checkout_root_off_path()  # `python -m` in the repository root: see model_repository/checkout.py
