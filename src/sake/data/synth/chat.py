"""Plain chat exchanges for pretraining the embedded backbone as a helpful assistant.

They teach the turn-taking of a chat model (greet, follow a simple instruction, define, explain
briefly, decline what cannot be done) without touching any audio attribute, so that the
backbone answers in sentences before it ever hears a sound.
"""

from __future__ import annotations

CHAT_EXCHANGES: tuple[tuple[str, str], ...] = (
    # Greetings and small talk.
    ("Hello!", "Hello! How can I help you today?"),
    ("Hi there.", "Hi! What would you like to do?"),
    ("Good morning.", "Good morning! What can I do for you today?"),
    ("Good evening!", "Good evening! How can I help?"),
    ("How are you?", "I'm doing well, thank you for asking. How can I help you?"),
    ("Thank you for your help.", "You're welcome! Let me know if you need anything else."),
    ("Thanks a lot!", "Glad I could help!"),
    ("Goodbye.", "Goodbye! Have a great day."),
    ("See you later.", "See you! Take care."),
    ("Can you help me with something?", "Of course. What do you need help with?"),
    ("I have a question.", "Sure, go ahead and ask."),
    ("Sorry to bother you.", "No bother at all. What can I do for you?"),
    # Simple instructions.
    ("Count from one to five.", "One, two, three, four, five."),
    ("Spell the word 'apple'.", "A-P-P-L-E."),
    ("Repeat after me: the sky is blue.", "The sky is blue."),
    ("Write the word 'hello' in capital letters.", "HELLO"),
    ("List three primary colors of paint.", "Red, yellow and blue."),
    (
        "Name the days of the week.",
        "Monday, Tuesday, Wednesday, Thursday, Friday, Saturday and Sunday.",
    ),
    ("Name the four seasons.", "Spring, summer, autumn and winter."),
    ("Give me a word that rhymes with 'cat'.", "Hat."),
    ("Give me the opposite of 'hot'.", "Cold."),
    ("What is the plural of 'mouse'?", "The plural of 'mouse' is 'mice'."),
    ("Sort these numbers from smallest to largest: 9, 2, 7, 4.", "2, 4, 7, 9."),
    ("Add 12 and 30.", "12 plus 30 is 42."),
    ("What is 5 times 6?", "5 times 6 is 30."),
    ("Subtract 8 from 20.", "20 minus 8 is 12."),
    ("What is half of 50?", "Half of 50 is 25."),
    ("Is 17 an even or an odd number?", "17 is an odd number."),
    ("Convert 2 kilometres to metres.", "2 kilometres is 2,000 metres."),
    ("How many hours are in a day?", "There are 24 hours in a day."),
    ("How many days are in a leap year?", "A leap year has 366 days."),
    ("Summarize this in one word: the movie was long, dull and confusing.", "Disappointing."),
    ("Make this sentence more polite: give me the report.", "Could you please send me the report?"),
    ("Correct the spelling: 'recieve'.", "The correct spelling is 'receive'."),
    ("Put these words in alphabetical order: pear, apple, mango.", "Apple, mango, pear."),
    ("Write a short title for a story about a lost key.", "The Key That Went Missing."),
    (
        "Give me a tip for staying focused while studying.",
        "Work in short blocks, for example 25 minutes, with a five-minute break after each one.",
    ),
    ("Suggest a name for a small bakery.", "How about 'The Warm Loaf'?"),
    ("Answer with yes or no: is ice frozen water?", "Yes."),
    ("Answer with yes or no: is the Sun a planet?", "No."),
    # Definitions.
    ("What is a noun?", "A noun is a word that names a person, place, thing or idea."),
    (
        "What is a verb?",
        "A verb is a word that describes an action or a state, like 'run' or 'be'.",
    ),
    ("What does 'generous' mean?", "Generous means willing to give more than is expected."),
    (
        "What is a synonym?",
        "A synonym is a word with the same or nearly the same meaning as another word.",
    ),
    (
        "What is an antonym?",
        "An antonym is a word with the opposite meaning, like 'big' and 'small'.",
    ),
    ("What is a recipe?", "A recipe is a set of instructions for preparing a dish."),
    ("What is a budget?", "A budget is a plan for how to spend and save money."),
    (
        "What is a calendar?",
        "A calendar is a chart that shows the days, weeks and months of a year.",
    ),
    (
        "What is a prime number?",
        "A prime number is a whole number greater than 1 whose only divisors are 1 and itself.",
    ),
    (
        "What is an even number?",
        "An even number is a whole number that can be divided by 2 with no remainder.",
    ),
    (
        "What is a habit?",
        "A habit is something a person does regularly, often without thinking about it.",
    ),
    (
        "What is a password?",
        "A password is a secret word or phrase used to prove who you are when you sign in.",
    ),
    (
        "What is a map?",
        "A map is a drawing that shows where places are and how to get between them.",
    ),
    (
        "What does 'punctual' mean?",
        "Punctual means arriving or doing something at the agreed time.",
    ),
    ("What is a paragraph?", "A paragraph is a group of sentences about one main idea."),
    # Short explanations.
    (
        "Why is the sky blue?",
        "Air scatters blue sunlight more than red sunlight, so blue light "
        "reaches our eyes from every part of the sky.",
    ),
    (
        "Why do we have seasons?",
        "Earth's axis is tilted, so each hemisphere gets more direct "
        "sunlight during part of the year and less during the rest.",
    ),
    ("Why does ice float?", "Ice is less dense than liquid water, so it floats on top."),
    (
        "Why do leaves change color in autumn?",
        "Trees stop making green chlorophyll, which "
        "lets the yellow and orange pigments in the leaves show.",
    ),
    (
        "How does a rainbow form?",
        "Sunlight is bent and reflected inside raindrops, which splits it into its colors.",
    ),
    (
        "Why should I drink water?",
        "Your body needs water to control its temperature, carry nutrients and remove waste.",
    ),
    (
        "Why is sleep important?",
        "Sleep lets the body recover and helps the brain store memories and stay alert.",
    ),
    (
        "How do I boil an egg?",
        "Place the egg in boiling water for about nine minutes, then "
        "cool it in cold water before peeling.",
    ),
    (
        "How do I make a cup of tea?",
        "Boil water, pour it over a tea bag in a cup, wait three "
        "to five minutes, then remove the bag.",
    ),
    (
        "How can I save money?",
        "Track what you spend, set a monthly budget and put aside a "
        "fixed amount as soon as you are paid.",
    ),
    (
        "How do plants grow?",
        "Plants take in water and nutrients through their roots and use "
        "sunlight to make food in their leaves.",
    ),
    ("What happens when water freezes?", "It turns into ice when it cools to 0 degrees Celsius."),
    (
        "Why do we brush our teeth?",
        "Brushing removes food and bacteria that would otherwise cause cavities and gum disease.",
    ),
    (
        "How do I write a good email?",
        "Use a clear subject line, keep the message short, state what you need and end politely.",
    ),
    (
        "Why do we wear seat belts?",
        "A seat belt holds you in place during a sudden stop and "
        "greatly reduces the risk of serious injury.",
    ),
    (
        "What should I do if I feel tired during the day?",
        "Try a short walk, drink some water and make sure you get enough sleep at night.",
    ),
    # Polite refusals of impossible requests.
    (
        "What will the weather be tomorrow in my town?",
        "I can't check live forecasts. A local weather service will have tomorrow's forecast.",
    ),
    (
        "Please turn off the lights in my kitchen.",
        "I can't control devices in your home. You "
        "could use the light switch or your home's control app.",
    ),
    (
        "Send an email to my manager for me.",
        "I can't send emails, but I can help you write one. What would you like to say?",
    ),
    (
        "What number am I thinking of?",
        "I can't know that. Tell me the number and we can play a game with it.",
    ),
    (
        "Tell me the winning lottery numbers for next week.",
        "Nobody can predict lottery numbers; every draw is random.",
    ),
    (
        "Draw a square circle.",
        "A shape cannot be a square and a circle at the same time, so that drawing is impossible.",
    ),
    (
        "Tell me exactly how many grains of sand are on Earth.",
        "Nobody can count them exactly. Estimates are only rough guesses.",
    ),
    (
        "Book me a table at a restaurant tonight.",
        "I can't make bookings, but I can help you "
        "decide what to say when you call the restaurant.",
    ),
    (
        "Can you taste this soup and tell me if it needs salt?",
        "I can't taste food. Try a small spoonful and add salt a pinch at a time.",
    ),
    (
        "What is the largest prime number?",
        "There is no largest prime number; there are infinitely many primes.",
    ),
    (
        "Find my lost keys.",
        "I can't see your home, but try retracing your steps and checking "
        "pockets, bags and the place where you last came in.",
    ),
    ("Divide 10 by zero.", "Division by zero is undefined, so there is no answer."),
    (
        "Give me a list of every word in every language.",
        "That list would be far too long to write, and new words are made all the time.",
    ),
    ("Make it stop raining.", "I can't change the weather, but an umbrella will keep you dry."),
    ("Tell me what I ate for breakfast.", "I have no way of knowing that. What did you have?"),
)
