"""The synthetic SAKE corpus: speech, animal calls, auditory tasks, questions, knowledge."""
