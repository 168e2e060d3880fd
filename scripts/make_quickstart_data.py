#!/usr/bin/env python3
"""Writes the quickstart dataset: data/quickstart/{train,valid}.jsonl.

The assistant is "Captain Byte": every assistant reply starts with "Ahoy! " and ends with the
line "— Captain Byte 🦀" (see data/quickstart/README.md for the exact rule). SmolLM2-135M-Instruct
never does this on its own, so a fine-tune that works is visible at a glance and checkable
mechanically. Conversations are built from the lists below with a seeded RNG: no network, no
model. The held-out set uses items (countries, words, facts, numbers) that the training set never
shows, so it measures whether the habit carries over to new questions.

Usage:
  scripts/make_quickstart_data.py            # (re)write the files
  scripts/make_quickstart_data.py --check    # exit 1 if the committed files differ
"""

import json
import random
import sys
from pathlib import Path

SEED = 20241
VALID_SHARE = 0.13
OPENING = "Ahoy! "
SIGNATURE = "— Captain Byte 🦀"
OUT = Path(__file__).resolve().parent.parent / "data" / "quickstart"

SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are a friendly assistant. Keep your answers short.",
    "Answer the question briefly.",
    "You are Captain Byte, the cheerful computer aboard a small ship.",
    "You are a knowledgeable tutor.",
]
SYSTEM_SHARE = 0.35

CAPITALS = [
    ("France", "Paris", "French"),
    ("Germany", "Berlin", "German"),
    ("Italy", "Rome", "Italian"),
    ("Spain", "Madrid", "Spanish"),
    ("Portugal", "Lisbon", "Portuguese"),
    ("Japan", "Tokyo", "Japanese"),
    ("China", "Beijing", "Mandarin Chinese"),
    ("India", "New Delhi", None),
    ("Canada", "Ottawa", None),
    ("Australia", "Canberra", "English"),
    ("Brazil", "Brasília", "Portuguese"),
    ("Argentina", "Buenos Aires", "Spanish"),
    ("Mexico", "Mexico City", "Spanish"),
    ("Egypt", "Cairo", "Arabic"),
    ("Kenya", "Nairobi", None),
    ("Nigeria", "Abuja", None),
    ("South Korea", "Seoul", "Korean"),
    ("Russia", "Moscow", "Russian"),
    ("Norway", "Oslo", "Norwegian"),
    ("Sweden", "Stockholm", "Swedish"),
    ("Finland", "Helsinki", None),
    ("Denmark", "Copenhagen", "Danish"),
    ("Poland", "Warsaw", "Polish"),
    ("Greece", "Athens", "Greek"),
    ("Turkey", "Ankara", "Turkish"),
    ("Ireland", "Dublin", None),
    ("Austria", "Vienna", "German"),
    ("Hungary", "Budapest", "Hungarian"),
    ("the Czech Republic", "Prague", "Czech"),
    ("the Netherlands", "Amsterdam", "Dutch"),
    ("Belgium", "Brussels", None),
    ("Peru", "Lima", "Spanish"),
    ("Chile", "Santiago", "Spanish"),
    ("Colombia", "Bogotá", "Spanish"),
    ("Thailand", "Bangkok", "Thai"),
    ("Vietnam", "Hanoi", "Vietnamese"),
    ("the Philippines", "Manila", None),
    ("New Zealand", "Wellington", None),
    ("Iceland", "Reykjavik", "Icelandic"),
    ("Morocco", "Rabat", None),
    ("Ethiopia", "Addis Ababa", None),
    ("Cuba", "Havana", "Spanish"),
    ("Ukraine", "Kyiv", "Ukrainian"),
    ("Romania", "Bucharest", "Romanian"),
]
CAPITAL_QUESTIONS = [
    "What is the capital of {c}?",
    "Which city is the capital of {c}?",
    "Name the capital of {c}.",
    "what's the capital of {c}",
]

DEFINITIONS = [
    ("photosynthesis", "Photosynthesis is how plants turn sunlight, water and carbon dioxide into sugar and oxygen."),
    ("gravity", "Gravity is the force that pulls objects with mass toward each other, like an apple toward the Earth."),
    ("an algorithm", "An algorithm is a step-by-step set of instructions for solving a problem."),
    ("democracy", "Democracy is a system of government in which citizens choose their leaders by voting."),
    ("a metaphor", "A metaphor describes something by calling it something else, as in \"time is a thief\"."),
    ("a noun", "A noun is a word that names a person, place, thing or idea."),
    ("a verb", "A verb is a word for an action or a state, like \"run\" or \"be\"."),
    ("an adjective", "An adjective is a word that describes a noun, like \"red\" or \"tall\"."),
    ("an atom", "An atom is the smallest unit of a chemical element, made of protons, neutrons and electrons."),
    ("a molecule", "A molecule is two or more atoms bonded together, like water, H2O."),
    ("an ecosystem", "An ecosystem is a community of living things interacting with each other and their surroundings."),
    ("inflation", "Inflation is a general rise in prices over time, so the same money buys less."),
    ("a habitat", "A habitat is the natural home where a plant or animal lives."),
    ("a volcano", "A volcano is an opening in the Earth's crust where molten rock, ash and gases escape."),
    ("a glacier", "A glacier is a large, slow-moving mass of ice formed from packed snow."),
    ("a prime number", "A prime number is a whole number greater than 1 whose only divisors are 1 and itself."),
    ("a fraction", "A fraction is a number that stands for part of a whole, like 3/4."),
    ("a compiler", "A compiler is a program that translates source code into machine code."),
    ("a database", "A database is an organised collection of data that can be searched and updated."),
    ("a synonym", "A synonym is a word that means the same, or nearly the same, as another word."),
    ("an antonym", "An antonym is a word that means the opposite of another word."),
    ("a biography", "A biography is the story of a person's life written by someone else."),
    ("evaporation", "Evaporation is a liquid turning into a gas, like a puddle drying in the sun."),
    ("condensation", "Condensation is a gas turning into a liquid, like dew forming on grass."),
    ("a mammal", "A mammal is a warm-blooded animal with hair or fur that feeds its young with milk."),
    ("a reptile", "A reptile is a cold-blooded animal with scales, like a snake or a lizard."),
    ("an orbit", "An orbit is the curved path one object takes around another, like the Moon around the Earth."),
    ("a peninsula", "A peninsula is a piece of land surrounded by water on three sides."),
    ("a continent", "A continent is one of the seven large land masses on Earth, such as Africa or Asia."),
    ("a budget", "A budget is a plan for how you will spend and save your money."),
    ("a hypothesis", "A hypothesis is a testable guess that explains an observation."),
    ("a thermometer", "A thermometer is an instrument that measures temperature."),
    ("a telescope", "A telescope is an instrument that makes distant objects look closer."),
    ("a vaccine", "A vaccine trains the immune system to recognise and fight a specific disease."),
    ("a fossil", "A fossil is the preserved remains or trace of a plant or animal from long ago."),
    ("a haiku", "A haiku is a short Japanese poem of three lines with five, seven and five syllables."),
    ("a palindrome", "A palindrome is a word or phrase that reads the same backwards, like \"level\"."),
    ("encryption", "Encryption turns data into a secret code that only someone with the key can read."),
    ("bandwidth", "Bandwidth is how much data a connection can carry per second."),
    ("renewable energy", "Renewable energy comes from sources that do not run out, like sunlight and wind."),
    ("erosion", "Erosion is the wearing away of rock or soil by water, wind or ice."),
    ("latitude", "Latitude says how far north or south of the equator a place is, in degrees."),
    ("longitude", "Longitude says how far east or west of the prime meridian a place is, in degrees."),
    ("a recipe", "A recipe is a set of instructions for preparing a dish."),
]
DEFINITION_QUESTIONS = [
    "What is {w}?",
    "Can you explain what {w} is?",
    "Define {w}, please.",
    "In one sentence, what is {w}?",
]

HOW_TO = [
    ("How do I boil an egg?", "Lower the egg into boiling water for about 9 minutes, then cool it in cold water before peeling."),
    ("How do I make a cup of tea?", "Pour freshly boiled water over a tea bag, let it steep for 3 to 5 minutes, then remove the bag."),
    ("How can I fall asleep faster?", "Keep a regular bedtime, avoid screens and caffeine in the evening, and keep your room dark and cool."),
    ("How do I reverse a list in Python?", "Call my_list.reverse() to reverse it in place, or use my_list[::-1] for a reversed copy."),
    ("How do I check which Python version I have?", "Run python --version in a terminal."),
    ("How do I create a new Git branch?", "Run git switch -c my-branch, or the older git checkout -b my-branch."),
    ("How do I undo my last Git commit but keep the changes?", "Run git reset --soft HEAD~1; your changes stay staged."),
    ("How do I list the files in a folder on Linux?", "Run ls, or ls -la to include hidden files and details."),
    ("How do I get the length of a string in JavaScript?", "Use its length property: \"hello\".length is 5."),
    ("How often should I water a cactus?", "Water it thoroughly only when the soil is completely dry, usually every two to four weeks."),
    ("How can I save money on groceries?", "Plan your meals, shop with a list, buy store brands and never shop hungry."),
    ("How do I get a coffee stain out of a shirt?", "Blot it, rinse it from the back with cold water, rub in a little liquid detergent, then wash as usual."),
    ("How do I convert Celsius to Fahrenheit?", "Multiply by 9/5 and add 32, so 20 °C is 68 °F."),
    ("How do I calculate the area of a rectangle?", "Multiply its length by its width."),
    ("How do I calculate an average?", "Add up all the values and divide by how many values there are."),
    ("How do I stop a nosebleed?", "Sit up, lean forward and pinch the soft part of your nose for about 10 minutes."),
    ("How can I learn a new language faster?", "Practise a little every day, learn the most common words first and speak with native speakers."),
    ("How do I make my password stronger?", "Use a long passphrase of several random words and never reuse it on other sites."),
    ("How do I take a screenshot on Windows?", "Press Windows + Shift + S and select the area you want."),
    ("How do I center text with CSS?", "Set text-align: center on the element that holds the text."),
    ("How do I read a JSON file in Python?", "Import json, open the file and call json.load(f)."),
    ("How do I keep bread fresh?", "Keep it in a bread box or paper bag at room temperature, and freeze what you will not eat soon."),
    ("How do I start running?", "Begin with short run-walk intervals three times a week and lengthen the running parts slowly."),
    ("How do I find the perimeter of a room?", "Measure the length of each wall and add them together."),
    ("How do I plant tomatoes?", "Plant seedlings in a sunny spot after the last frost, bury part of the stem and water deeply."),
    ("How do I count the words in a file on Linux?", "Run wc -w followed by the file name."),
    ("How do I say hello in Spanish?", "Say \"hola\", or \"buenos días\" in the morning."),
    ("How do I say thank you in French?", "Say \"merci\", or \"merci beaucoup\" for thank you very much."),
    ("How do I sort a list in Python?", "Use sorted(my_list) for a new sorted list, or my_list.sort() to sort in place."),
    ("How do I make rice on the stove?", "Simmer one part rice in two parts water with the lid on for about 15 minutes, then let it rest."),
    ("How do I remember people's names?", "Repeat the name when you are introduced and use it once or twice in the conversation."),
    ("How do I write a good email subject line?", "Keep it short and specific, and say what you need, like \"Invoice 142 due Friday\"."),
]

FACTS = [
    ("How many planets are in our solar system?", "There are eight planets in our solar system."),
    ("What is the largest planet in the solar system?", "Jupiter is the largest planet in the solar system."),
    ("Which planet is closest to the Sun?", "Mercury is the planet closest to the Sun."),
    ("Which planet is known as the Red Planet?", "Mars is known as the Red Planet."),
    ("At what temperature does water boil at sea level?", "Water boils at 100 °C, or 212 °F, at sea level."),
    ("At what temperature does water freeze?", "Water freezes at 0 °C, which is 32 °F."),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is Au."),
    ("What is the chemical symbol for iron?", "The chemical symbol for iron is Fe."),
    ("What is the chemical symbol for sodium?", "The chemical symbol for sodium is Na."),
    ("Which gas do plants take in from the air?", "Plants take in carbon dioxide and release oxygen."),
    ("Who wrote Romeo and Juliet?", "William Shakespeare wrote Romeo and Juliet."),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci painted the Mona Lisa."),
    ("Who developed the theory of relativity?", "Albert Einstein developed the theory of relativity."),
    ("What is the largest ocean on Earth?", "The Pacific Ocean is the largest ocean on Earth."),
    ("What is the tallest mountain in the world?", "Mount Everest is the tallest, about 8,849 metres above sea level."),
    ("How many continents are there?", "There are seven continents."),
    ("How many days are in a leap year?", "A leap year has 366 days."),
    ("How many sides does a hexagon have?", "A hexagon has six sides."),
    ("How many sides does an octagon have?", "An octagon has eight sides."),
    ("How fast does light travel?", "Light travels at about 300,000 kilometres per second in a vacuum."),
    ("What is H2O?", "H2O is the chemical formula for water."),
    ("How many bones are in the adult human body?", "An adult human has 206 bones."),
    ("What is the hardest natural material?", "Diamond is the hardest natural material."),
    ("What is the largest mammal?", "The blue whale is the largest mammal."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("How many legs does an insect have?", "An insect has six legs."),
    ("When did humans first land on the Moon?", "Humans first landed on the Moon in 1969, with Apollo 11."),
    ("What currency is used in Japan?", "Japan uses the yen."),
    ("What is the smallest prime number?", "The smallest prime number is 2."),
    ("What colour do you get by mixing blue and yellow?", "Mixing blue and yellow gives green."),
    ("How many strings does a standard guitar have?", "A standard guitar has six strings."),
    ("Which instrument usually has 88 keys?", "The piano usually has 88 keys."),
    ("Who is credited with inventing the telephone?", "Alexander Graham Bell is credited with inventing the telephone, in 1876."),
    ("Which part of the cell makes most of its energy?", "The mitochondria make most of a cell's energy."),
    ("What does CPU stand for?", "CPU stands for central processing unit."),
    ("What does RAM stand for?", "RAM stands for random access memory."),
    ("What does HTML stand for?", "HTML stands for HyperText Markup Language."),
    ("What does GPU stand for?", "GPU stands for graphics processing unit."),
    ("What does USB stand for?", "USB stands for Universal Serial Bus."),
    ("What do bees make?", "Bees make honey and beeswax."),
    ("What is the main language spoken in Brazil?", "The main language of Brazil is Portuguese."),
    ("How many hours are in a day?", "There are 24 hours in a day."),
    ("What is the largest hot desert in the world?", "The Sahara is the largest hot desert in the world."),
    ("How many players are on a football (soccer) team on the field?", "Each team has eleven players on the field."),
]

WORDS = [
    "apple", "river", "planet", "garden", "window", "rocket", "pencil", "forest", "island",
    "bridge", "castle", "dragon", "guitar", "harbor", "jungle", "lemon", "market", "orange",
    "parrot", "quartz", "silver", "tunnel", "violin", "wizard", "yellow", "anchor", "button",
    "candle", "desert", "engine", "falcon", "ginger", "helmet", "kettle", "ladder", "magnet",
]
PLURALS = [
    ("mouse", "mice"), ("child", "children"), ("goose", "geese"), ("tooth", "teeth"),
    ("foot", "feet"), ("person", "people"), ("box", "boxes"), ("city", "cities"),
    ("knife", "knives"), ("leaf", "leaves"), ("woman", "women"), ("baby", "babies"),
    ("bus", "buses"), ("potato", "potatoes"), ("wolf", "wolves"), ("sheep", "sheep"),
]
OPPOSITES = [
    ("hot", "cold"), ("big", "small"), ("happy", "sad"), ("fast", "slow"), ("light", "dark"),
    ("early", "late"), ("full", "empty"), ("strong", "weak"), ("noisy", "quiet"), ("wet", "dry"),
    ("cheap", "expensive"), ("ancient", "modern"), ("rough", "smooth"), ("generous", "stingy"),
]

CONVERSIONS = [
    # (question, answer, factor): n units -> n * factor smaller units
    ("How many minutes are in {n} hours?", "There are {m} minutes in {n} hours.", 60),
    ("How many seconds are in {n} minutes?", "There are {m} seconds in {n} minutes.", 60),
    ("How many days are in {n} weeks?", "There are {m} days in {n} weeks.", 7),
    ("How many hours are in {n} days?", "There are {m} hours in {n} days.", 24),
    ("How many metres are in {n} kilometres?", "There are {m} metres in {n} kilometres.", 1000),
    ("How many grams are in {n} kilograms?", "There are {m} grams in {n} kilograms.", 1000),
    ("How many centimetres are in {n} metres?", "There are {m} centimetres in {n} metres.", 100),
    ("How many months are in {n} years?", "There are {m} months in {n} years.", 12),
    ("How many eggs are in {n} dozen?", "There are {m} eggs in {n} dozen.", 12),
]

GREETINGS = [
    ("Hi there!", "Hello, friend. What can I do for you today?"),
    ("Hello!", "Hello! Ask me anything and I will keep it short."),
    ("Good morning!", "Good morning to you too. What is on your mind?"),
    ("Hey, are you there?", "Right here and ready to help. What do you need?"),
    ("Can you help me with a question?", "Of course. Fire away!"),
]
LANGUAGE_FOLLOW_UPS = ["What language do people speak there?", "And what language is spoken there?"]
THANKS = [
    ("Thanks!", "You're welcome. Happy sailing!"),
    ("Thank you, that helps.", "Glad to help. Ask again any time."),
    ("Great, thanks a lot.", "Any time, friend."),
]


def reply(text):
    return f"{OPENING}{text}\n{SIGNATURE}"


def arithmetic_items(rng, count):
    """Distinct (question, answer, value) triples over +, -, × and exact ÷."""
    seen = set()
    items = []
    while len(items) < count:
        op = rng.choice("+-*/")
        if op == "+":
            a, b = rng.randint(2, 99), rng.randint(2, 99)
            c, word = a + b, "plus"
            q = rng.choice(["What is {a} + {b}?", "What is {a} plus {b}?", "Add {a} and {b}.", "{a}+{b}=?"])
        elif op == "-":
            a, b = rng.randint(20, 99), rng.randint(2, 19)
            c, word = a - b, "minus"
            q = rng.choice(["What is {a} - {b}?", "What is {a} minus {b}?", "Subtract {b} from {a}."])
        elif op == "*":
            a, b = rng.randint(2, 12), rng.randint(2, 12)
            c, word = a * b, "times"
            q = rng.choice(["What is {a} times {b}?", "What is {a} x {b}?", "Multiply {a} by {b}."])
        else:
            b, c = rng.randint(2, 12), rng.randint(2, 12)
            a, word = b * c, "divided by"
            q = rng.choice(["What is {a} divided by {b}?", "What is {a} / {b}?"])
        if (op, a, b) in seen:
            continue
        seen.add((op, a, b))
        items.append((q.format(a=a, b=b), f"{a} {word} {b} is {c}.", c))
    return items


def split(rng, items):
    """Shuffles `items` and returns (train, valid) with VALID_SHARE of them held out."""
    items = list(items)
    rng.shuffle(items)
    n_valid = max(1, round(len(items) * VALID_SHARE))
    return items[n_valid:], items[:n_valid]


def single_turn(rng, question, answer):
    return [("user", question), ("assistant", reply(answer))]


def build(rng):
    """Returns (train, valid): lists of turn lists [(role, content), ...] without system prompts."""
    train, valid = [], []

    def add(items, to_turns):
        tr, va = split(rng, items)
        train.extend(to_turns(x) for x in tr)
        valid.extend(to_turns(x) for x in va)
        return tr, va

    def capital_turns(x):
        country, capital, language = x
        turns = single_turn(rng, rng.choice(CAPITAL_QUESTIONS).format(c=country),
                            f"The capital of {country} is {capital}.")
        # Multi-turn: the follow-up refers back to the first answer.
        if language and rng.random() < 0.4:
            turns += [("user", rng.choice(LANGUAGE_FOLLOW_UPS)),
                      ("assistant", reply(f"People in {country} mainly speak {language}."))]
        return turns

    add(CAPITALS, capital_turns)
    add(DEFINITIONS, lambda x: single_turn(rng, rng.choice(DEFINITION_QUESTIONS).format(w=x[0]), x[1]))
    how_to = add(HOW_TO, lambda x: single_turn(rng, x[0], x[1]))
    facts = add(FACTS, lambda x: single_turn(rng, x[0], x[1]))
    add(arithmetic_items(rng, 60), lambda x: single_turn(rng, x[0], x[1]))

    conversions = [(q, a, f, n) for q, a, f in CONVERSIONS for n in (2, 3, 5)]
    add(conversions, lambda x: single_turn(rng, x[0].format(n=x[3]), x[1].format(n=x[3], m=x[2] * x[3])))

    word_tasks = []
    for w in WORDS:
        if rng.random() < 0.5:
            word_tasks.append((f"How many letters are in the word \"{w}\"?",
                               f"The word \"{w}\" has {len(w)} letters."))
        else:
            word_tasks.append((f"Spell \"{w}\" backwards.", f"\"{w}\" backwards is \"{w[::-1]}\"."))
    word_tasks += [(f"What is the plural of \"{s}\"?", f"The plural of \"{s}\" is \"{p}\".") for s, p in PLURALS]
    word_tasks += [(f"What is the opposite of \"{w}\"?", f"The opposite of \"{w}\" is \"{o}\".") for w, o in OPPOSITES]
    add(word_tasks, lambda x: single_turn(rng, x[0], x[1]))

    sums = sorted({(rng.randint(2, 30), rng.randint(2, 30), rng.randint(2, 5)) for _ in range(12)})
    add(sums, lambda x: [
        ("user", f"I have {x[0]} apples and buy {x[1]} more. How many do I have?"),
        ("assistant", reply(f"You have {x[0] + x[1]} apples, since {x[0]} plus {x[1]} is {x[0] + x[1]}.")),
        ("user", f"Now multiply that by {x[2]}."),
        ("assistant", reply(f"{x[0] + x[1]} times {x[2]} is {(x[0] + x[1]) * x[2]}.")),
    ])
    # Greetings and thanks wrap a question of the same side of the split, so no held-out
    # question is ever trained on.
    for side, rows in ((0, train), (1, valid)):
        for greeting, answer in GREETINGS:
            for question, fact in rng.sample(facts[side], 2 if side == 0 else 1):
                rows.append([("user", greeting), ("assistant", reply(answer)),
                             ("user", question), ("assistant", reply(fact))])
        for thanks, answer in THANKS:
            for question, how in rng.sample(how_to[side], 2 if side == 0 else 1):
                rows.append([("user", question), ("assistant", reply(how)),
                             ("user", thanks), ("assistant", reply(answer))])
    return train, valid


def finish(rng, turns, weight_first):
    """A JSON-ready conversation: maybe a system prompt, and weight 0 on an earlier assistant turn."""
    messages = []
    if rng.random() < SYSTEM_SHARE:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    assistants = [i for i, (role, _) in enumerate(turns) if role == "assistant"]
    for i, (role, content) in enumerate(turns):
        message = {"role": role, "content": content}
        if weight_first and len(assistants) > 1 and i == assistants[0]:
            message["weight"] = 0
        messages.append(message)
    return {"messages": messages}


def check(train, valid):
    def user_prompts(rows):
        return {m["content"] for r in rows for m in r["messages"] if m["role"] == "user"}
    generic = {g for g, _ in GREETINGS} | {t for t, _ in THANKS} | set(LANGUAGE_FOLLOW_UPS)
    shared = {p for p in user_prompts(train) & user_prompts(valid)
              if p not in generic and not p.startswith("Now multiply that by")}
    assert not shared, f"held-out prompts also in train: {sorted(shared)[:5]}"
    last_valid = [r["messages"][-1]["content"] for r in valid]
    assert not set(last_valid) & {r["messages"][-1]["content"] for r in train} - {
        reply(a) for _, a in THANKS}, "a held-out answer also appears in train"
    for row in train + valid:
        for m in row["messages"]:
            if m["role"] == "assistant":
                assert m["content"].startswith(OPENING) and m["content"].endswith("\n" + SIGNATURE)
    assert len(train) >= 200 and len(valid) >= 40, (len(train), len(valid))


def render(rows):
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def main():
    rng = random.Random(SEED)
    train_turns, valid_turns = build(rng)
    rng.shuffle(train_turns)
    rng.shuffle(valid_turns)
    train = [finish(rng, t, weight_first=rng.random() < 0.3) for t in train_turns]
    valid = [finish(rng, t, weight_first=False) for t in valid_turns]
    check(train, valid)
    files = {OUT / "train.jsonl": render(train), OUT / "valid.jsonl": render(valid)}
    if "--check" in sys.argv[1:]:
        stale = [str(p) for p, text in files.items() if not p.exists() or p.read_text(encoding="utf-8") != text]
        if stale:
            print("out of date: " + ", ".join(stale) + " (run scripts/make_quickstart_data.py)")
            sys.exit(1)
        print(f"up to date: {len(train)} train, {len(valid)} valid")
        return
    OUT.mkdir(parents=True, exist_ok=True)
    for path, text in files.items():
        path.write_text(text, encoding="utf-8")
    print(f"wrote {len(train)} train and {len(valid)} valid conversations to {OUT}")


if __name__ == "__main__":
    main()
