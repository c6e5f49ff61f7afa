"""The portability knowledge base: facts about each label, organised by SAKE's categories.

A portability probe asks about a label *through the audio* ("what does the animal in this
recording eat?"), so an edit that really changed what the model hears must carry over to the
facts it knows about the new label. The same facts, written as sentences, are pretraining
material for the embedded backbone, which has to know them before anything can be edited.

Every answer is true in the real world; where a category is a convention (care items, typical
behaviours) the answer is the plainly sensible one. Where two labels genuinely share an answer
(cow and sheep both graze on grass) the shared answer is kept and the corpus builder skips that
category for the pair, as SAKE does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from sake.data.schema import ATTRIBUTES, LABELS


@dataclass(frozen=True)
class Category:
    """One portability category of one attribute.

    `distractors` are wrong for every label of the attribute; they fill the options of a
    category whose labels have too few distinct answers.
    """

    attribute: str
    name: str
    answers: Mapping[str, str] = field(hash=False)
    fact_template: str
    audio_questions: Mapping[str, tuple[str, ...]] = field(hash=False)
    text_question: str
    distractors: tuple[str, ...] = ()

    def fact(self, label: str) -> str:
        """The declarative sentence stating this category's fact about `label`."""
        return self.fact_template.format(label=label, answer=self.answers[label])

    def text_probe(self, label: str) -> str:
        """The text-only question that names `label`, for probing the backbone directly."""
        return self.text_question.format(label=label)

    def shared_answers(self) -> dict[str, tuple[str, ...]]:
        """Answers that more than one label has, with the labels that share them."""
        holders: dict[str, list[str]] = {}
        for label, value in self.answers.items():
            holders.setdefault(value, []).append(label)
        return {value: tuple(labels) for value, labels in holders.items() if len(labels) > 1}


def _category(
    attribute: str,
    name: str,
    answers: dict[str, str],
    fact_template: str,
    train: tuple[str, ...],
    test: tuple[str, ...],
    text_question: str,
    distractors: tuple[str, ...] = (),
) -> Category:
    """Validation reuses the train questions, as for recognition questions."""
    return Category(
        attribute=attribute,
        name=name,
        answers=MappingProxyType(dict(answers)),
        fact_template=fact_template,
        audio_questions=MappingProxyType({"train": train, "val": train, "test": test}),
        text_question=text_question,
        distractors=distractors,
    )


_ANIMAL: tuple[Category, ...] = (
    _category(
        "Animal",
        "behavior",
        {
            "dog": "Fetching a thrown stick",
            "cat": "Purring when content",
            "pig": "Wallowing in mud",
            "cow": "Swishing its tail at flies",
            "frog": "Catching insects with its tongue",
            "hen": "Sitting on eggs to hatch them",
            "rooster": "Guarding a flock of hens",
            "sheep": "Following the flock",
            "crow": "Hiding food to eat later",
        },
        "{answer} is a typical behavior of the {label}.",
        (
            "Considering the animal in the audio, what is its most typical behavior?",
            "Which behavior is most characteristic of the animal heard in this recording?",
            "Based on the sound in the clip, which of these behaviors would you expect from "
            "the animal making it?",
            "What does the animal in this recording typically do?",
        ),
        (
            "Taking the animal you hear into account, which listed behavior is most typical of it?",
            "Which of the following actions is the animal in the audio best known for?",
        ),
        "What is a typical behavior of the {label}?",
        ("Spinning a web", "Shedding its skin whole"),
    ),
    _category(
        "Animal",
        "care item",
        {
            "dog": "A leash",
            "cat": "A litter box",
            "pig": "A pigsty",
            "cow": "A milking machine",
            "frog": "A humid terrarium",
            "hen": "A chicken coop",
            "rooster": "A chicken coop",
            "sheep": "A pair of shears",
            "crow": "A large aviary",
        },
        "{answer} is an item commonly used in caring for a {label}.",
        (
            "Which item is most commonly needed to care for the animal heard in the audio?",
            "Considering the animal in this recording, which of these items would you use to "
            "look after it?",
            "Based on the sound, which item would an owner of this animal most likely need?",
            "What care item is typically associated with the animal making this sound?",
        ),
        (
            "If you had to look after the animal in this clip, which of the listed items would "
            "be most useful?",
            "Which of these items belongs to the care routine of the animal you hear?",
        ),
        "Which item is commonly used in caring for a {label}?",
        ("An aquarium filter", "A hamster wheel"),
    ),
    _category(
        "Animal",
        "diet",
        {
            "dog": "Meat and bones",
            "cat": "Mice",
            "pig": "Acorns and roots",
            "cow": "Grass",
            "frog": "Insects",
            "hen": "Grain and seeds",
            "rooster": "Grain and seeds",
            "sheep": "Grass",
            "crow": "Carrion",
        },
        "Main diet of the {label}: {answer}.",
        (
            "Considering the animal in the audio, what does it typically eat?",
            "Which diet best matches the animal heard in this recording?",
            "Based on the sound, what is the main food of the animal making it?",
            "What would the animal in this clip mostly feed on?",
        ),
        (
            "From the listed foods, which one makes up most of the diet of the animal you hear?",
            "Which of these is the usual food of the animal in the recording?",
        ),
        "What does a {label} mainly eat?",
        ("Nectar", "Plankton", "Eucalyptus leaves"),
    ),
    _category(
        "Animal",
        "family",
        {
            "dog": "Gray wolf",
            "cat": "African wildcat",
            "pig": "Wild boar",
            "cow": "Aurochs",
            "frog": "Toad",
            "hen": "Red junglefowl",
            "rooster": "Red junglefowl",
            "sheep": "Mouflon",
            "crow": "Raven",
        },
        "{answer} is a close wild relative of the {label}.",
        (
            "Which of these animals is most closely related to the animal in the audio?",
            "From a taxonomic point of view, which wild animal is the closest relative of the "
            "one heard in the recording?",
            "Based on biological classification, which of the listed animals is nearest to the "
            "animal making this sound?",
            "Which wild species shares the closest lineage with the animal in this clip?",
        ),
        (
            "Considering the animal in the recording, which of the following is its closest "
            "wild relative?",
            "In the animal family tree, which listed species sits closest to the animal you hear?",
        ),
        "Which wild animal is a close relative of the {label}?",
        ("Ostrich", "Hyena", "Octopus"),
    ),
    _category(
        "Animal",
        "locomotion",
        {
            "dog": "Walking on four padded paws",
            "cat": "Walking on four padded paws",
            "pig": "Walking on four hooves",
            "cow": "Walking on four hooves",
            "frog": "Hopping",
            "hen": "Walking on two legs",
            "rooster": "Walking on two legs",
            "sheep": "Walking on four hooves",
            "crow": "Flying",
        },
        "{answer} is how the {label} usually moves around.",
        (
            "How does the animal heard in the audio usually move around?",
            "Which mode of locomotion best describes the animal in this recording?",
            "Based on the sound, what is the primary way the animal making it gets around?",
            "Considering the animal in the clip, which of these movements is typical for it?",
        ),
        (
            "Which locomotion method matches the animal you hear in the recording?",
            "From the listed options, how does the animal in this audio mainly travel?",
        ),
        "How does a {label} usually move around?",
        ("Slithering on its belly", "Swinging through trees", "Swimming with fins"),
    ),
    _category(
        "Animal",
        "physical",
        {
            "dog": "Paws with non-retractable claws",
            "cat": "Retractable claws",
            "pig": "A flat snout",
            "cow": "A large udder",
            "frog": "Webbed feet",
            "hen": "A small comb",
            "rooster": "Long curved tail feathers",
            "sheep": "A woolly fleece",
            "crow": "Glossy black feathers",
        },
        "A distinctive physical feature of the {label}: {answer}.",
        (
            "Which physical feature does the animal in the audio have?",
            "What physical trait best matches the animal heard in this recording?",
            "Based on the sound, which of these features would the animal making it have?",
            "Considering the animal in this clip, which physical characteristic is typical of it?",
        ),
        (
            "Which of the listed body features belongs to the animal you hear?",
            "From the sound alone, which physical attribute would you expect the animal in the "
            "recording to have?",
        ),
        "Which physical feature does a {label} have?",
        ("Scales", "Tentacles", "A hard shell"),
    ),
    _category(
        "Animal",
        "reproduction",
        {
            "dog": "Litters of puppies",
            "cat": "Litters of kittens",
            "pig": "Large litters of piglets",
            "cow": "Usually a single calf",
            "frog": "Eggs that hatch into tadpoles",
            "hen": "Laying eggs even without a rooster",
            "rooster": "Fertilizing the hens' eggs",
            "sheep": "One or two lambs at a time",
            "crow": "Eggs in a stick nest high in a tree",
        },
        "How the {label} reproduces: {answer}.",
        (
            "How does the animal heard in the audio reproduce?",
            "Which reproductive pattern matches the animal in this recording?",
            "Based on the sound, how does the animal making it produce offspring?",
            "Considering the animal in this clip, which of these describes how it has its young?",
        ),
        (
            "Which of the listed methods describes how the animal you hear brings offspring "
            "into the world?",
            "From the options, which reproductive strategy belongs to the animal in the recording?",
        ),
        "How does a {label} reproduce?",
        ("Splitting in two", "Carrying its young in a pouch"),
    ),
    _category(
        "Animal",
        "vocalization",
        {
            "dog": "Barking",
            "cat": "Meowing",
            "pig": "Oinking",
            "cow": "Mooing",
            "frog": "Croaking",
            "hen": "Clucking",
            "rooster": "Crowing",
            "sheep": "Bleating",
            "crow": "Cawing",
        },
        "{answer} is the sound a {label} makes.",
        (
            "Which vocalization matches the animal in the audio?",
            "What is the name of the sound that the animal in this recording makes?",
            "Which of these sounds is typical of the animal heard in the clip?",
            "Based on the recording, what kind of call does this animal produce?",
        ),
        (
            "Which word best describes the call of the animal you hear?",
            "From the options, which sound is characteristic of the animal in this recording?",
        ),
        "What sound does a {label} make?",
        ("Hissing", "Trumpeting"),
    ),
)

_EMOTION: tuple[Category, ...] = (
    _category(
        "Emotion",
        "descriptive sentence",
        {
            "happy": "This is the best day of my life!",
            "disgust": "Ugh, that smell is absolutely revolting!",
            "sad": "I feel so down, nothing can cheer me up.",
            "fear": "I'm terrified, something is out there in the dark!",
            "angry": "This is outrageous, I am absolutely furious!",
        },
        'A person feeling the emotion {label} might say: "{answer}"',
        (
            "Which sentence would a person feeling the same emotion as the speaker most likely "
            "say?",
            "Which of these sentences best reflects the emotion heard in the audio?",
            "Considering the speaker's emotion, which sentence expresses the same feeling?",
            "Which statement matches the emotional state of the speaker in this recording?",
        ),
        (
            "If someone shared the speaker's emotion, which of the following would they be "
            "likely to say?",
            "Pick the sentence that conveys the same emotion as the voice in the clip.",
        ),
        "Which sentence would a person feeling the emotion {label} most likely say?",
        ("The meeting starts at ten o'clock.", "Please pass me the salt."),
    ),
    _category(
        "Emotion",
        "facial expression",
        {
            "happy": "A broad smile",
            "disgust": "A wrinkled nose and curled upper lip",
            "sad": "Downturned lips and teary eyes",
            "fear": "Wide eyes and raised eyebrows",
            "angry": "Furrowed brows and a clenched jaw",
        },
        "{answer} is the typical facial expression of the emotion {label}.",
        (
            "Which facial expression best matches the emotion in the audio?",
            "What facial expression would go with the emotion conveyed by the speaker?",
            "Considering the speaker's emotion, which of these faces would they most likely make?",
            "Which facial expression corresponds to the feeling heard in this recording?",
        ),
        (
            "Based on the emotion in the clip, which expression would you expect on the "
            "speaker's face?",
            "From the listed expressions, which one fits the emotional tone of the speech?",
        ),
        "Which facial expression is typical of the emotion {label}?",
        ("A relaxed, neutral face", "A yawn with drooping eyelids"),
    ),
    _category(
        "Emotion",
        "scenario",
        {
            "happy": "Receiving long-awaited good news",
            "disgust": "Finding mold on a half-eaten sandwich",
            "sad": "Losing a beloved pet",
            "fear": "Hearing footsteps behind you on a dark street",
            "angry": "Being blamed for someone else's mistake",
        },
        "{answer} is a situation that typically causes the emotion {label}.",
        (
            "Which scenario most likely matches the emotion expressed by the speaker?",
            "What situation best fits the emotion heard in this recording?",
            "Considering the speaker's emotional tone, which of these events might they have "
            "just experienced?",
            "Which of the following situations would typically cause the emotion in the audio?",
        ),
        (
            "Based on how the speaker sounds, which scenario best explains their emotion?",
            "Which situation aligns with the feeling conveyed in the clip?",
        ),
        "Which situation typically causes the emotion {label}?",
        ("Reading a train timetable", "Folding clean laundry"),
    ),
    _category(
        "Emotion",
        "social interaction",
        {
            "happy": "Celebrating the good news with them",
            "disgust": "Helping them get away from what repels them",
            "sad": "Offering comfort and a listening ear",
            "fear": "Reassuring them that they are safe",
            "angry": "Giving them space to calm down",
        },
        "{answer} is a fitting response to someone who feels the emotion {label}.",
        (
            "Based on the speaker's emotion, which social response would be most appropriate?",
            "How should you respond to the speaker, given the emotion in their voice?",
            "Considering the emotion heard in the audio, which reaction is most suitable?",
            "Which way of interacting with the speaker best fits the emotion they express?",
        ),
        (
            "Given how the speaker in this recording feels, what would be the most suitable "
            "way to respond?",
            "Which social interaction is most appropriate for the emotion conveyed in the clip?",
        ),
        "What is a fitting response to someone who feels the emotion {label}?",
        ("Asking them for directions", "Reading them the weather report"),
    ),
)

_GENDER: tuple[Category, ...] = (
    _category(
        "Gender",
        "history",
        {"male": "Abraham Lincoln", "female": "Cleopatra"},
        "{answer} is a famous {label} historical figure.",
        (
            "Which historical figure shares the same gender as the speaker?",
            "Which of these historical figures has the same gender as the person speaking in "
            "the audio?",
            "Considering the speaker's voice, which historical figure is of the same gender?",
            "Based on the recording, which figure from history matches the speaker's gender?",
        ),
        (
            "Which person from history is the same gender as the voice in this clip?",
            "Among the listed historical figures, who shares the speaker's gender?",
        ),
        "Which historical figure is {label}?",
    ),
    _category(
        "Gender",
        "celebrity",
        {"male": "Lionel Messi", "female": "Taylor Swift"},
        "{answer} is a well-known {label} celebrity.",
        (
            "Which of these celebrities is the same gender as the speaker?",
            "Listening to the audio, which celebrity shares the speaker's gender?",
            "Based on the speaker's voice, which celebrity has the same gender?",
            "Which celebrity matches the gender of the person in this recording?",
        ),
        (
            "Among the listed celebrities, who has the same gender as the voice you hear?",
            "Who from the options would share the gender of the speaker in this clip?",
        ),
        "Which celebrity is {label}?",
    ),
    _category(
        "Gender",
        "clothing",
        {"male": "Kilt", "female": "Sari"},
        "{answer} is a traditional clothing item associated with the {label} gender.",
        (
            "Which traditional clothing item best matches the speaker's gender?",
            "Considering the voice in the audio, which traditional garment is associated with "
            "the speaker's gender?",
            "Based on the speaker's gender, which of these traditional clothes would they "
            "typically wear?",
            "Which item of traditional attire is associated with the gender of the person "
            "speaking?",
        ),
        (
            "In its cultural context, which traditional garment fits the gender of the speaker "
            "in this clip?",
            "Which of the listed traditional clothing items corresponds to the speaker's gender?",
        ),
        "Which traditional clothing item is associated with the {label} gender?",
    ),
    _category(
        "Gender",
        "title",
        {"male": "Mr.", "female": "Ms."},
        "{answer} is a term of address for a {label} person.",
        (
            "Which term of address is appropriate for someone of the same gender as the speaker?",
            "Which title would you use for a person of the speaker's gender?",
            "Considering the speaker's voice, which form of address fits people of the same "
            "gender?",
            "Based on the recording, which honorific matches the speaker's gender?",
        ),
        (
            "Which of these titles is used for people who share the speaker's gender?",
            "How would you address someone of the same gender as the voice in this clip?",
        ),
        "Which term of address is used for a {label} person?",
    ),
    _category(
        "Gender",
        "vocal range",
        {"male": "Bass", "female": "Soprano"},
        "{answer} is a vocal range typical of {label} singers.",
        (
            "Which vocal range is most associated with the speaker's gender?",
            "Which of these singing voice types corresponds to the gender of the speaker?",
            "Considering the voice in the audio, which vocal range do singers of the same "
            "gender typically have?",
            "Based on the recording, which vocal range fits the speaker's gender?",
        ),
        (
            "Which voice type would singers of the same gender as the speaker usually have?",
            "From the listed vocal ranges, which one matches the gender of the voice you hear?",
        ),
        "Which vocal range is typical of {label} singers?",
    ),
)

_LANGUAGE: tuple[Category, ...] = (
    _category(
        "Language",
        "ISO code",
        {
            "English": "en",
            "German": "de",
            "Spanish": "es",
            "French": "fr",
            "Italian": "it",
            "Chinese": "zh",
            "Japanese": "ja",
            "Korean": "ko",
        },
        "The ISO 639-1 code of the {label} language is {answer}.",
        (
            "What is the ISO 639-1 code of the language spoken in this recording?",
            "Which ISO language code matches the language heard in the audio?",
            "Considering the speech in this clip, which two-letter ISO code identifies its "
            "language?",
            "Which of these language codes corresponds to the language of the speaker?",
        ),
        (
            "From the listed ISO 639-1 codes, which one represents the language you hear?",
            "Which code would you use to tag the language spoken in this audio?",
        ),
        "What is the ISO 639-1 code of the {label} language?",
    ),
    _category(
        "Language",
        "city",
        {
            "English": "London",
            "German": "Berlin",
            "Spanish": "Madrid",
            "French": "Paris",
            "Italian": "Rome",
            "Chinese": "Beijing",
            "Japanese": "Tokyo",
            "Korean": "Seoul",
        },
        "{answer} is a city in a country where {label} is an official language.",
        (
            "Which city is located in a country where the language of the audio is an official "
            "language?",
            "In which of these cities is the language spoken in this recording an official "
            "language of the country?",
            "Considering the speaker's language, which city lies in a country that uses it "
            "officially?",
            "Which of the listed cities is in a country where the language in this clip is "
            "official?",
        ),
        (
            "From the options, which city belongs to a country with the audio's language as an "
            "official language?",
            "Which city would you visit to find the language of this speech used officially?",
        ),
        "Which city is in a country where {label} is an official language?",
    ),
    _category(
        "Language",
        "dish",
        {
            "English": "Fish and chips",
            "German": "Bratwurst",
            "Spanish": "Paella",
            "French": "Coq au vin",
            "Italian": "Pizza margherita",
            "Chinese": "Peking duck",
            "Japanese": "Sushi",
            "Korean": "Kimchi",
        },
        "{answer} is a dish from a country where {label} is the main language.",
        (
            "Which dish comes from a country where the language in the audio is the main language?",
            "Considering the language spoken in this recording, which of these dishes "
            "originated in a country where it is primarily spoken?",
            "Which dish is most closely linked to a country where the speaker's language is "
            "spoken?",
            "Based on the language in this clip, which traditional dish would you associate "
            "with it?",
        ),
        (
            "Which of the listed dishes originates from a country where the language you hear "
            "is dominant?",
            "From the options, which dish belongs to the cuisine of a country that speaks the "
            "language of this audio?",
        ),
        "Which dish comes from a country where {label} is the main language?",
    ),
    _category(
        "Language",
        "history",
        {
            "English": "Winston Churchill",
            "German": "Otto von Bismarck",
            "Spanish": "Simón Bolívar",
            "French": "Napoleon Bonaparte",
            "Italian": "Giuseppe Garibaldi",
            "Chinese": "Confucius",
            "Japanese": "Tokugawa Ieyasu",
            "Korean": "Sejong the Great",
        },
        "{answer} is a historical figure from a country where {label} is an official language.",
        (
            "Which historical figure came from a country where the language in the audio is an "
            "official language?",
            "Considering the speaker's language, which of these historical figures is from a "
            "nation that uses it officially?",
            "Which figure from history is associated with a country where the language of this "
            "recording is spoken?",
            "Based on the language in the clip, which historical figure most likely came from a "
            "country where it is official?",
        ),
        (
            "Among the listed historical figures, who is from a country with the audio's "
            "language as an official language?",
            "Which historical figure is linked to a nation whose official language is the one "
            "spoken in this audio?",
        ),
        "Which historical figure is from a country where {label} is an official language?",
    ),
    _category(
        "Language",
        "language family",
        {
            "English": "Germanic",
            "German": "Germanic",
            "Spanish": "Romance",
            "French": "Romance",
            "Italian": "Romance",
            "Chinese": "Sino-Tibetan",
            "Japanese": "Japonic",
            "Korean": "Koreanic",
        },
        "The {label} language belongs to the {answer} language family.",
        (
            "Which language family does the language in the audio belong to?",
            "Based on the spoken language in this recording, which language family includes it?",
            "Considering the speech in the clip, which of these language families does its "
            "language belong to?",
            "To which family of languages does the speaker's language belong?",
        ),
        (
            "From the listed language families, which one contains the language you hear?",
            "Which language family would a linguist assign the language of this audio to?",
        ),
        "Which language family does the {label} language belong to?",
        ("Uralic", "Semitic", "Turkic", "Dravidian"),
    ),
    _category(
        "Language",
        "literary work",
        {
            "English": "Hamlet",
            "German": "Faust",
            "Spanish": "Don Quixote",
            "French": "Les Misérables",
            "Italian": "The Divine Comedy",
            "Chinese": "Dream of the Red Chamber",
            "Japanese": "The Tale of Genji",
            "Korean": "The Tale of Chunhyang",
        },
        "{answer} was originally written in {label}.",
        (
            "Which literary work was originally written in the language spoken in this audio?",
            "Considering the language of the recording, which of these books was first "
            "composed in it?",
            "Which literary classic was authored in the language heard in the clip?",
            "Based on the speaker's language, which of the listed works was originally "
            "written in it?",
        ),
        (
            "From the options, which literary masterpiece was first written in the language "
            "you hear?",
            "Which of these classics has the language of this speech as its original language?",
        ),
        "Which literary work was originally written in {label}?",
    ),
    _category(
        "Language",
        "official language",
        {
            "English": "Ireland",
            "German": "Austria",
            "Spanish": "Colombia",
            "French": "Senegal",
            "Italian": "Italy",
            "Chinese": "China",
            "Japanese": "Japan",
            "Korean": "South Korea",
        },
        "{label} is an official language of {answer}.",
        (
            "Which country has the language spoken in the audio as an official language?",
            "Considering the language of this recording, which of these countries recognizes "
            "it officially?",
            "In which of the listed countries is the speaker's language an official language?",
            "Based on the speech in the clip, which country uses its language officially?",
        ),
        (
            "From the options, which country counts the language you hear among its official "
            "languages?",
            "Which nation officially recognizes the language spoken in this audio?",
        ),
        "In which country is {label} an official language?",
    ),
    _category(
        "Language",
        "proficiency test",
        {
            "English": "TOEFL",
            "German": "TestDaF",
            "Spanish": "DELE",
            "French": "DELF",
            "Italian": "CILS",
            "Chinese": "HSK",
            "Japanese": "JLPT",
            "Korean": "TOPIK",
        },
        "{answer} is a standardized test of proficiency in {label}.",
        (
            "Which test measures proficiency in the language spoken in this audio?",
            "If you wanted to certify your skill in the language of this recording, which test "
            "would you take?",
            "Which standardized test evaluates the language heard in the clip?",
            "Considering the speaker's language, which of these exams assesses proficiency in it?",
        ),
        (
            "From the listed exams, which one tests proficiency in the language you hear?",
            "Which certificate exam would demonstrate fluency in the language of this speech?",
        ),
        "Which standardized test measures proficiency in {label}?",
    ),
    _category(
        "Language",
        "translation",
        {
            "English": "Thank you",
            "German": "Danke",
            "Spanish": "Gracias",
            "French": "Merci",
            "Italian": "Grazie",
            "Chinese": "Xiexie",
            "Japanese": "Arigato",
            "Korean": "Gamsahamnida",
        },
        "\"{answer}\" means 'thank you' in {label}.",
        (
            "How do you say 'thank you' in the language spoken in this audio?",
            "Which of these words means 'thank you' in the language of this recording?",
            "Considering the speaker's language, which option is the correct translation of "
            "'thank you'?",
            "Which word would the speaker use to say 'thank you' in their language?",
        ),
        (
            "From the options, which phrase expresses 'thank you' in the language you hear?",
            "In the language of this clip, which of the listed words translates 'thank you'?",
        ),
        "How do you say 'thank you' in {label}?",
    ),
)

_CATEGORIES: Mapping[str, tuple[Category, ...]] = MappingProxyType(
    {"Animal": _ANIMAL, "Emotion": _EMOTION, "Gender": _GENDER, "Language": _LANGUAGE}
)


def categories(attribute: str) -> tuple[Category, ...]:
    """Every portability category of one attribute, in SAKE's order."""
    if attribute not in _CATEGORIES:
        raise ValueError(f"unknown attribute {attribute!r}; known: {', '.join(ATTRIBUTES)}")
    return _CATEGORIES[attribute]


def category_named(attribute: str, name: str) -> Category:
    """One category by its SAKE name."""
    for candidate in categories(attribute):
        if candidate.name == name:
            return candidate
    known = ", ".join(c.name for c in categories(attribute))
    raise ValueError(f"unknown {attribute} category {name!r}; known: {known}")


def answer(attribute: str, category: str, label: str) -> str:
    """The fact a category states about one label."""
    if label not in LABELS[attribute]:
        raise ValueError(f"unknown {attribute} label {label!r}")
    return category_named(attribute, category).answers[label]


def is_portable(category: Category, y_o: str, y_e: str) -> bool:
    """SAKE's exclusion rule: a category can probe an edit only if its answer changes."""
    return category.answers[y_o] != category.answers[y_e]


def portability_options(
    category: Category, y_o: str, y_e: str, n: int, rng: np.random.Generator
) -> list[str]:
    """`n` shuffled, distinct options holding the y_e answer, the y_o answer and distractors.

    Distractors come from the other labels' answers first, then from the category's own pool
    of answers that are wrong for every label.
    """
    if not is_portable(category, y_o, y_e):
        raise ValueError(
            f"{category.attribute}/{category.name}: {y_o!r} and {y_e!r} share the answer "
            f"{category.answers[y_e]!r}; this category cannot probe the edit"
        )
    targets = [category.answers[y_e], category.answers[y_o]]
    from_labels = sorted({value for value in category.answers.values() if value not in targets})
    from_pool = [value for value in category.distractors if value not in category.answers.values()]
    needed = n - len(targets)
    if needed < 0 or needed > len(from_labels) + len(from_pool):
        raise ValueError(
            f"{category.attribute}/{category.name} cannot give {n} distinct options "
            f"(at most {len(targets) + len(from_labels) + len(from_pool)})"
        )
    picked = _sample(from_labels, min(needed, len(from_labels)), rng)
    picked += _sample(from_pool, needed - len(picked), rng)
    options = targets + picked
    return [options[i] for i in rng.permutation(len(options))]


def _sample(values: list[str], k: int, rng: np.random.Generator) -> list[str]:
    return [values[i] for i in rng.choice(len(values), size=k, replace=False)] if k else []


def facts(attribute: str | None = None) -> list[str]:
    """Every fact sentence of the knowledge base (or of one attribute), for pretraining."""
    attributes = ATTRIBUTES if attribute is None else (attribute,)
    return [
        entry.fact(label)
        for name in attributes
        for entry in categories(name)
        for label in LABELS[name]
    ]
