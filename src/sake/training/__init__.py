"""Training of the embedded model desta_tiny: prompts, data, Lightning modules, stages.

`examples` writes the training text from the synthetic corpus's sources; `prompts` renders it
exactly as the model is prompted at inference; `data`, `clips` and `distill` turn it into
batches; `modules` and `callbacks` are the Lightning side; `stages` runs one stage and
`pipeline` all of them (`python train.py experiment=desta_tiny`).
"""
