"""Training: Lightning modules wrapping pathkit.models, data modules and collators, staged recipes."""
