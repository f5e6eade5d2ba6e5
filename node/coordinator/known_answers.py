"""Known-answer items every node carries: spot checks work without ``../shared/data/tasks`` (issue 22).

Spot checks (reputation.py) compare an expert's answers with known ones.  They
used to draw only on the benchmark task files beside the checkout, so on an
installed node (no ``shared/`` folder) they were silently off and a liar was
never checked.  These items ship inside the package: arithmetic generated
from a fixed seed (unbounded, so a liar cannot memorise the whole set from a
few checks) and a few plain facts written for this file.  They are easy on
purpose: honest small models get most of them right, so a liar's wrong
answers stand out after a few checks (the comparison is with the peers'
accuracy on the same items, so "easy" needs no exact calibration).

Multiple choice, four options, scored by the evaluation's scorer like the task files' items.
"""

from __future__ import annotations

import random

from node.evaluation import TaskItem

TASK = "known_answers"
LETTERS = ("A", "B", "C", "D")

# (question, right answer, three wrong ones): common knowledge, unambiguous.
FACTS: tuple[tuple[str, str, tuple[str, str, str]], ...] = (
    ("How many days are in a week?", "7", ("5", "6", "10")),
    ("How many legs does a spider have?", "8", ("4", "6", "10")),
    ("Which planet do humans live on?", "Earth", ("Mars", "Jupiter", "Venus")),
    ("What color is a clear daytime sky?", "Blue", ("Green", "Red", "Black")),
    ("What do bees make?", "Honey", ("Milk", "Silk", "Wool")),
    ("Which is the largest ocean on Earth?", "The Pacific Ocean", ("The Arctic Ocean", "The Indian Ocean",
                                                                   "The Southern Ocean")),
    ("What is frozen water called?", "Ice", ("Steam", "Sand", "Glass")),
    ("How many months are in a year?", "12", ("10", "11", "13")),
    ("Which animal is known for having a trunk?", "The elephant", ("The horse", "The cat", "The rabbit")),
    ("What is the capital of France?", "Paris", ("Berlin", "Madrid", "Rome")),
    ("What is the capital of Japan?", "Tokyo", ("Beijing", "Seoul", "Bangkok")),
    ("Which gas do plants take in from the air to make food?", "Carbon dioxide", ("Helium", "Neon", "Argon")),
    ("At sea level, water boils at how many degrees Celsius?", "100", ("50", "0", "212")),
    ("How many hours are in a day?", "24", ("12", "20", "36")),
    ("Which of these is a mammal?", "The dolphin", ("The shark", "The trout", "The octopus")),
    ("What is the opposite of hot?", "Cold", ("Warm", "Loud", "Tall")),
    ("Which shape has three sides?", "A triangle", ("A square", "A circle", "A hexagon")),
    ("What does a thermometer measure?", "Temperature", ("Weight", "Length", "Time")),
    ("Which star is at the center of our solar system?", "The Sun", ("Sirius", "Polaris", "Vega")),
    ("How many minutes are in an hour?", "60", ("30", "100", "90")),
    ("What is the chemical symbol for water?", "H2O", ("CO2", "NaCl", "O3")),
    ("Which season comes after winter?", "Spring", ("Autumn", "Summer", "Winter again")),
    ("What is the largest planet in our solar system?", "Jupiter", ("Mercury", "Mars", "Earth")),
    ("Which organ pumps blood through the body?", "The heart", ("The lungs", "The stomach", "The liver")),
)


def _item(key: str, question: str, right: str, wrong: tuple[str, ...], rng: random.Random) -> TaskItem:
    options = [right, *wrong]
    rng.shuffle(options)
    choices = tuple(zip(LETTERS, options, strict=True))
    gold = LETTERS[options.index(right)]
    return TaskItem(task=TASK, task_type="multiple_choice", split="dev", key=key, question=question,
                    answers=(gold,), choices=choices)


def arithmetic(count: int, *, seed: int = 0) -> list[TaskItem]:
    """``count`` sums, differences and small products, each with three near-miss wrong options."""
    items = []
    for i in range(count):
        rng = random.Random(f"mosaic-known-{seed}-{i}")
        a, b = rng.randint(2, 49), rng.randint(2, 49)
        op = rng.choice("+-x")
        if op == "x":
            a, b = a % 12 + 2, b % 12 + 2
        value = a + b if op == "+" else (a - b if op == "-" else a * b)
        wrong: list[int] = []
        for delta in rng.sample([-10, -2, -1, 1, 2, 10], 6):
            if len(wrong) < 3 and value + delta not in wrong:
                wrong.append(value + delta)
        symbol = {"+": "+", "-": "-", "x": "*"}[op]
        items.append(_item(f"arith-{seed}-{i}", f"What is {a} {symbol} {b}?", str(value),
                           tuple(str(w) for w in wrong), rng))
    return items


def facts() -> list[TaskItem]:
    rng = random.Random("mosaic-known-facts")
    return [_item(f"fact-{i}", q, right, wrong, rng) for i, (q, right, wrong) in enumerate(FACTS)]


def known_answer_items(arithmetic_count: int = 200) -> list[TaskItem]:
    """The built-in check items: the facts, then generated arithmetic."""
    return facts() + arithmetic(arithmetic_count)
