"""Recognition questions of the synthetic corpus, written in SAKE's style.

Train and test use disjoint paraphrases, so every test question is one the model never saw
during editing or hypernetwork training; the validation split reuses the train paraphrases.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

from sake.data.schema import ATTRIBUTES

SPLITS: tuple[str, ...] = ("train", "val", "test")

_TRAIN_TEMPLATES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "Animal": (
            "Which animal made the sound in this recording?",
            "Listen to the clip and choose the animal that produced the sound.",
            "Based on the sound you hear, which animal is it?",
            "Identify the animal whose call is heard in the audio.",
            "Which of the animals below is the source of this sound?",
            "Select the animal that is most likely making the noise in the clip.",
            "From the options, pick the animal heard in the recording.",
            "What animal do you hear in this audio?",
            "Which creature is calling in the audio clip?",
            "Judging by its call, which animal is in the recording?",
            "Listen carefully: which animal produced this vocalization?",
            "Match the sound in the clip to one of the animals listed.",
            "Whose call is this? Choose from the animals below.",
            "Which animal’s voice can be heard in this recording?",
        ),
        "Emotion": (
            "What emotion does the speaker express in this recording?",
            "Which emotion best describes the speaker's tone of voice?",
            "How is the speaker feeling, judging by their voice?",
            "What emotional quality can you hear in the speaker's voice?",
            "Listen to the speaker. Which emotion comes through?",
            "Identify the emotion conveyed by the speaker.",
            "Which feeling is the speaker expressing in the audio?",
            "From the voice in the clip, which emotion is the speaker showing?",
            "What mood does the speaker's voice convey?",
            "Select the emotion that matches how the speaker sounds.",
            "Based on the intonation, what is the speaker's emotional state?",
            "Which of these emotions is the speaker experiencing in the recording?",
            "What emotion is carried by the speaker’s delivery in this clip?",
        ),
        "Gender": (
            "What is the gender of the speaker in this recording?",
            "Identify the gender of the speaker.",
            "Listen to the voice and select the speaker's gender.",
            "Is the speaker in the audio male or female?",
            "Which gender best matches the voice in the clip?",
            "Based on the voice, what is the speaker's gender?",
            "Determine the gender of the person speaking in this audio.",
            "From the vocal characteristics, which gender is the speaker?",
            "Choose the gender of the speaker you hear.",
            "Judging by pitch and timbre, what gender is the speaker?",
            "Classify the speaker in the recording by gender.",
            "What gender does the speaker’s voice indicate?",
        ),
        "Language": (
            "Which language is spoken in this recording?",
            "Identify the language of the speech in the audio.",
            "Listen to the clip and choose the language the speaker is using.",
            "What language does the speaker use in this audio?",
            "Select the language that matches the speech in the recording.",
            "From the options, which language is being spoken?",
            "Determine the spoken language in this clip.",
            "In which language is the speaker talking?",
            "Based on the sounds of the speech, which language is it?",
            "Which of the following languages is heard in the audio?",
            "Recognize the language of the utterance in this recording.",
            "Which language are the words in this audio spoken in?",
            "What is the language of the speaker’s utterance?",
        ),
    }
)

_TEST_TEMPLATES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "Animal": (
            "Determine which animal is responsible for the noise in this audio.",
            "Which of the listed animals would make a sound like the one in this clip?",
            "After listening, name the animal that the sound comes from.",
            "Tell which animal is vocalizing in the provided audio.",
            "Which animal does this recorded call belong to?",
            "Out of the choices given, which animal produced the sound you just heard?",
            "Pick the animal that best explains the sound in the recording.",
        ),
        "Emotion": (
            "Judging by the speaker's tone, what are they feeling?",
            "Which emotional state is reflected in the way the speaker talks?",
            "What emotion would you assign to the voice in this audio?",
            "Listen to how the words are spoken and choose the emotion being expressed.",
            "Which emotion does the vocal expression in the recording reveal?",
            "Classify the emotional tone of the speech in this clip.",
            "What is the speaker’s emotional state, going by the sound of their voice?",
        ),
        "Gender": (
            "Listen to the recording and tell whether the voice belongs to a male or a female "
            "speaker.",
            "Which gender label fits the person talking in this clip?",
            "Given the voice in the audio, select the speaker's gender.",
            "What is your judgment of the speaker's gender from this audio?",
            "Assign a gender to the speaker based on how the voice sounds.",
            "Which gender would you attribute to the voice heard here?",
        ),
        "Language": (
            "Listen to the speech and name the language it is in.",
            "Which language would you say the speaker is using in this clip?",
            "Tell which language the recorded speech belongs to.",
            "Judging by pronunciation and rhythm, what language is spoken here?",
            "Pick the language that the person in the recording is speaking.",
            "Classify the language of the speech you hear.",
            "What language do the words in the provided audio belong to?",
        ),
    }
)


def recognition_templates(attribute: str, split: str) -> tuple[str, ...]:
    """Recognition questions (without options) for one attribute and split."""
    if attribute not in ATTRIBUTES:
        raise ValueError(f"unknown attribute {attribute!r}; known: {', '.join(ATTRIBUTES)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    return (_TEST_TEMPLATES if split == "test" else _TRAIN_TEMPLATES)[attribute]


def format_mcq(question: str, options: Sequence[str]) -> str:
    """A question followed by SAKE's `Options:` block, one option per line."""
    return f"{question}\n\nOptions:\n" + "\n".join(options)


def option_count(attribute: str) -> int:
    """Options per question: SAKE asks gender questions with two options, the rest with four."""
    if attribute not in ATTRIBUTES:
        raise ValueError(f"unknown attribute {attribute!r}; known: {', '.join(ATTRIBUTES)}")
    return 2 if attribute == "Gender" else 4
