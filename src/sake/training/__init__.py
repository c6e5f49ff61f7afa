"""Training: the stages of the embedded model desta_tiny, and the shared Lightning machinery.

`examples` writes the training text from the synthetic corpus's sources; `prompts` renders it
exactly as the model is prompted at inference; `text`, `clips` and `distill` turn it into
sequences, features and stage-1 targets; `data` plans resumable batches; `modules` and
`callbacks` are the Lightning side and `trainer` fits one stage; `stages` runs one stage of
desta_tiny and `pipeline` all of them (`python train.py experiment=desta_tiny`). `hypernet`
trains KE/MEND hypernetworks with the same machinery.
"""
