"""Models: encoders, pathology CLIP, connectors, LongNet, the vision-language model. Never imports Lightning."""
