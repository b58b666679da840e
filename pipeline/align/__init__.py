"""RE alignment: fine-tune a text tower so that tiers of a caption chain lie radially outward from
the root (embedding of the empty string). Losses in `losses`, encoders in `encoders`, loop in `train`."""
