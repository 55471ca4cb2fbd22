"""In-house judges of the embedded world (the small CLIP) and the loading of real judges' weights
from local paths."""
