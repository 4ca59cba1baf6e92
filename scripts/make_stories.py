"""Deterministic procedural children's-story generator: the source text of the embedded dataset."""

# Output format: one story per block; a story's paragraphs are on consecutive lines and stories
# are separated by one blank line. Plain ASCII. Only random.Random(seed) and explicit lists drive
# the choices (no set or dict iteration order), so a seed gives the same text on every Python 3.

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path

# ----------------------------------------------------------------------------
# vocabulary of the story world

# fmt: off
GIRLS = [
    "Lily", "Mia", "Sara", "Emma", "Lucy", "Anna", "Zoe", "Ella", "Amy", "Rosa", "Maya", "Nora",
    "Ivy", "Ruby", "Sue", "Kim", "Jenny", "Molly", "Daisy", "Hannah", "Grace", "Chloe", "Bella",
    "Tina", "Alice", "June", "Pam", "Lola",
]
BOYS = [
    "Tom", "Ben", "Max", "Sam", "Leo", "Jack", "Tim", "Finn", "Jake", "Noah", "Eli", "Owen",
    "Luke", "Dan", "Ryan", "Theo", "Oscar", "Pete", "Joe", "Milo", "Hugo", "Adam", "Liam", "Kai",
    "Bob", "Ned", "Toby", "Rex",
]
PET_NAMES = [
    "Spot", "Buddy", "Whiskers", "Fluffy", "Pip", "Coco", "Bolt", "Sunny", "Patch", "Bubbles",
    "Pebble", "Tiny", "Rusty", "Honey", "Ziggy", "Button", "Nibbles", "Poppy", "Biscuit", "Dot",
    "Jumbo", "Shadow", "Peanut", "Clover",
]
ANIMALS = [
    "dog", "cat", "bunny", "bear", "bird", "fox", "duck", "frog", "mouse", "owl", "turtle",
    "lion", "pig", "squirrel", "horse", "elephant", "dragon", "robot", "puppy", "kitten", "lamb",
    "monkey", "hedgehog", "penguin",
]
ANIMAL_LOOKS = [
    "little", "small", "fluffy", "brown", "white", "spotted", "tiny", "big", "gray", "orange",
    "young", "soft",
]
TRAITS = [
    "kind", "brave", "curious", "shy", "silly", "happy", "clever", "gentle", "playful", "grumpy",
    "busy", "friendly", "careful", "proud", "stubborn", "messy", "cheerful", "quiet", "bossy",
    "helpful", "lazy", "funny", "polite", "impatient",
]
PLACES = [
    ("the park", "at"), ("the forest", "in"), ("the beach", "at"), ("the garden", "in"),
    ("the farm", "on"), ("the backyard", "in"), ("the school", "at"), ("the library", "at"),
    ("the kitchen", "in"), ("the pond", "by"), ("the meadow", "in"), ("the big hill", "on"),
    ("the zoo", "at"), ("the toy store", "at"), ("the attic", "in"), ("the old castle", "in"),
    ("the river", "by"), ("the market", "at"), ("the playground", "at"),
    ("the snowy field", "in"), ("the woods", "in"), ("the lake", "by"), ("the town", "in"),
    ("the little house", "in"), ("the sandbox", "in"), ("the orchard", "in"),
]
COLORS = [
    "red", "blue", "green", "yellow", "purple", "pink", "orange", "shiny", "striped", "sparkly",
    "golden", "silver", "spotted", "white", "black", "brown",
]
OBJECTS = [
    "ball", "kite", "teddy bear", "toy car", "doll", "hat", "book", "shell", "rock", "crayon",
    "cup", "blanket", "balloon", "boat", "drum", "flower", "key", "box", "ring", "sock", "spoon",
    "bike", "train", "scarf", "bucket", "whistle", "robot toy", "puzzle", "marble", "feather",
    "button", "umbrella", "wagon", "jar of jam", "ribbon", "bell",
]
ADULTS = [
    ("Mom", "she"), ("Dad", "he"), ("Grandma", "she"), ("Grandpa", "he"), ("the teacher", "she"),
    ("Aunt May", "she"), ("Uncle Joe", "he"), ("the old farmer", "he"), ("the wise owl", "she"),
    ("the park man", "he"),
]
FOODS = [
    "cookies", "apples", "cake", "soup", "bread", "pie", "carrots", "berries", "sandwiches",
    "pancakes", "ice cream", "cheese", "grapes", "muffins", "honey", "corn",
]
OPENERS = [
    "Once upon a time, there was {a_desc} named {name}.",
    "Once upon a time, in a small town, there lived {a_desc} named {name}.",
    "There was once {a_desc} called {name}.",
    "One day, {a_desc} named {name} woke up early.",
    "{name} was {a_desc} who lived near {place}.",
    "Long ago, {a_desc} named {name} lived in a cozy house.",
    "In a quiet village, there was {a_desc}. {His} name was {name}.",
    "Once there was {a_desc}. Everyone called {him} {name}.",
]
TIMES = [
    "One sunny morning", "One rainy day", "On a cold winter day", "One warm afternoon",
    "Late one evening", "On a windy day", "One spring morning", "On a bright Saturday", "One day",
    "The next morning", "After lunch", "One summer day",
]
FEELINGS_GOOD = [
    "happy", "glad", "proud", "excited", "thankful", "calm", "joyful",
]
FEELINGS_BAD = [
    "sad", "scared", "worried", "upset", "lonely", "angry", "grumpy",
]
FEARS = [
    ("the dark", "it is too dark"), ("the big slide", "it is so tall"),
    ("the deep water", "the water looks so deep"), ("the loud thunder", "it is so loud"),
    ("the big dog next door", "it barks so loudly"), ("the old tree house", "the ladder creaks"),
    ("the tall swing", "it goes so high"), ("the noisy train", "it makes a big noise"),
]
SKILLS = [
    ("ride a bike", "rode the bike all the way down the path"),
    ("swim", "swam across the little pool"), ("read a book", "read the whole page"),
    ("whistle", "made a clear, happy whistle"), ("tie {his} shoes", "tied a perfect bow"),
    ("climb the tree", "climbed to the top branch"), ("fly a kite", "made the kite fly high"),
    ("jump rope", "jumped ten times without stopping"),
    ("bake bread", "took a warm loaf out of the oven"),
    ("catch a ball", "caught the ball with both hands"),
]
BUILDS = [
    ("a sandcastle", "a big wave came and washed it away"),
    ("a snowman", "the sun came out and made it melt"),
    ("a tower of blocks", "the cat jumped on it and it fell down"),
    ("a cake", "they dropped the flour on the floor"),
    ("a blanket fort", "the blanket slipped and the fort fell down"),
    ("a paper boat", "it got wet and soft in the rain"),
    ("a card for Mom", "the paint spilled all over it"),
    ("a bird house", "the wind blew it off the fence"),
    ("a little garden", "a rabbit ate all the new leaves"),
]
TROUBLES = [
    ("a kitten", "stuck up in a tall tree", "meowing"),
    ("a little bird", "with a hurt wing on the ground", "chirping"),
    ("a duckling", "lost and far from its mother", "quacking"),
    ("a puppy", "caught in a bush", "crying"),
    ("a baby turtle", "stuck on its back", "kicking its legs"),
    ("a small frog", "trapped in a bucket", "croaking"),
    ("a butterfly", "caught in a spider web", "flapping"),
    ("a mouse", "stuck in a hole in the fence", "squeaking"),
]
FINDS = [
    ("an old map", "a big X near the old oak tree"),
    ("a tiny door", "a room full of glowing lights"),
    ("a shiny key", "a little box with a song inside"),
    ("a glowing stone", "a secret path to a hidden garden"),
    ("a message in a bottle", "a picnic left for whoever found it"),
    ("a trail of footprints", "a family of bunnies in a warm nest"),
]
MORALS = [
    "The moral of the story is: sharing makes everyone happy.",
    "The moral of the story is to always be kind, even when it is hard.",
    "{name} learned that it is good to ask for help.",
    "{name} learned that trying again is the best way to learn.",
    "From that day on, {name} always listened to {adult}.",
    "And so {name} learned that being brave does not mean you are not scared.",
    "{name} knew that friends make everything better.",
    "The lesson is simple: take care of the things you love.",
]
ENDINGS = [
    "From that day on, {name} and {friend} were best friends.",
    "And they all lived happily ever after.",
    "It was the best day ever.",
    "{name} smiled and fell asleep, dreaming of the next adventure.",
    "That night, {name} told {adult} all about the day.",
    "{name} felt {good} and warm inside.",
    "They laughed and played until the sun went down.",
    "The end.",
]
# fmt: on


# ----------------------------------------------------------------------------
# characters and text helpers


def pick(rng: random.Random, items: Sequence):
    return items[rng.randrange(len(items))]


def make_character(rng: random.Random, exclude: str = "") -> dict[str, str]:
    """A person or animal with a name, a short description and pronouns."""
    while True:
        kind = rng.randrange(3)
        if kind == 0:
            name, he, desc = pick(rng, GIRLS), "she", "little girl"
        elif kind == 1:
            name, he, desc = pick(rng, BOYS), "he", "little boy"
        else:
            he = "she" if rng.randrange(2) else "he"
            name, desc = pick(rng, PET_NAMES), f"{pick(rng, ANIMAL_LOOKS)} {pick(rng, ANIMALS)}"
        if name != exclude:
            break
    trait = pick(rng, TRAITS)
    desc = f"{trait} {desc}"
    his, him = ("her", "her") if he == "she" else ("his", "him")
    article = "an" if desc[0] in "aeiou" else "a"
    return {
        "name": name,
        "he": he,
        "his": his,
        "him": him,
        "desc": desc,
        "trait": trait,
        "a_desc": f"{article} {desc}",
    }


def fill(template: str, f: dict[str, str]) -> str:
    return template.format(**f)


class Story:
    """Collects paragraphs; `say` adds a sentence formatted with the story's fields."""

    def __init__(self, rng: random.Random, fields: dict[str, str]) -> None:
        self.rng, self.f, self.paras, self.cur = rng, fields, [], []

    def say(self, *choices: str) -> None:
        self.cur.append(fill(pick(self.rng, choices), self.f))

    def maybe(self, p: float, *choices: str) -> None:
        if self.rng.random() < p:
            self.say(*choices)

    def para(self) -> None:
        if self.cur:
            self.paras.append(" ".join(self.cur))
            self.cur = []

    def text(self) -> str:
        self.para()
        return "\n".join(self.paras)


def cap(s: str) -> str:
    return s[:1].upper() + s[1:]


# ----------------------------------------------------------------------------
# plots: each one writes the middle of a story


def plot_lost(s: Story) -> None:
    s.say(
        "{name} had a {color} {obj}. {He} loved it very much.",
        "{name}'s favorite thing was a {color} {obj}.",
        "{adult_cap} gave {name} a {color} {obj}, and {he} took it everywhere.",
    )
    s.say(
        "{time}, {name} took the {obj} to {place}.",
        "{time}, {name} played with the {obj} {at} {place}.",
    )
    s.say(
        "But when it was time to go home, the {obj} was gone!",
        "Then {name} looked down. The {obj} was not there!",
    )
    s.say('"Oh no! Where is my {obj}?" {name} cried.', '"My {obj}! I lost my {obj}!" said {name}.')
    s.para()
    s.say(
        '{friend} saw that {name} was {bad}. "Don\'t worry, I will help you look," {fhe} said.',
        '{friend} came running. "What\'s wrong?" {fhe} asked. {name} told {fhim} about the {obj}.',
    )
    for spot in s.rng.sample(
        [
            "under the bench",
            "behind a big rock",
            "in the tall grass",
            "under a pile of leaves",
            "near the fence",
            "inside an old box",
        ],
        2,
    ):
        s.say(
            f"They looked {spot}, but the {{obj}} was not there.",
            f"They searched {spot}. No {{obj}}.",
        )
    s.say(
        'Then {friend} pointed and shouted, "Look! There it is!"',
        "Suddenly {name} heard a little sound. A {helper} was sitting right next to the {obj}!",
    )
    s.say(
        '{name} picked up the {obj} and hugged it. "Thank you, {friend}!" {he} said.',
        "{name} was so {good}. {He} held the {obj} tight and smiled.",
    )
    s.para()


def plot_sharing(s: Story) -> None:
    s.say("{name} had a new {color} {obj}.", "{adult_cap} bought {name} a {color} {obj}.")
    s.say(
        '{friend} wanted to play with it too. "Can I have a turn?" {fhe} asked.',
        '{friend} saw the {obj} and said, "Wow! Can we play together?"',
    )
    s.say(
        'But {name} held it close. "No! It is mine!" {he} said.',
        '"No, you can\'t," said {name}. "You might break it."',
    )
    s.say("{friend} felt {bad} and walked away.", "{friend}'s face fell, and {fhe} sat down alone.")
    s.para()
    s.say(
        '{adult_cap} saw what happened. "{name}, how would you feel if {friend} "'
        '"did not share with you?"',
        "Later, {name} played alone. The {obj} was not as fun without a friend.",
    )
    s.say(
        "{name} thought about it for a long time.", "{name} looked at {friend} and felt bad inside."
    )
    s.say(
        '{He} walked over and said, "I am sorry. Let\'s play with the {obj} together."',
        '"Here, {friend}," {name} said softly. "You can go first."',
    )
    s.say(
        "{friend} smiled a big smile. They took turns, and it was much more fun.",
        "They played all afternoon, laughing and running {at} {place}.",
    )
    s.para()


def plot_fear(s: Story) -> None:
    fear, why = pick(s.rng, FEARS)
    s.f.update(fear=fear, Why=cap(why))
    s.say("{name} was afraid of {fear}.", "There was one thing {name} did not like: {fear}.")
    s.say('{He} said, "I can\'t! {Why}!"', '"I don\'t want to," {name} said. "{Why}."')
    s.para()
    s.say(
        '{friend} held {his} hand. "I will be right here with you," {fhe} said.',
        '{adult_cap} knelt down and said, "Take a deep breath. You are braver than you think."',
    )
    s.say(
        "{name} closed {his} eyes and counted to three.",
        "{name} took one small step, then another.",
    )
    s.say(
        "It was not so bad after all!",
        "And then... it was fun!",
        "{His} heart beat fast, but {he} did it!",
    )
    s.say('"I did it! I really did it!" {name} shouted.', '{name} laughed. "Can we do it again?"')
    s.para()


def plot_helping(s: Story) -> None:
    animal, trouble, sound = pick(s.rng, TROUBLES)
    s.f.update(animal=animal, trouble=trouble, sound=sound)
    s.say(
        "{time}, {name} was walking {at} {place} with {friend}.",
        "{time}, {name} and {friend} went to {place}.",
    )
    s.say(
        "They heard a sad sound. It was {animal}, {trouble}, {sound}.",
        "Suddenly they saw {animal}. It was {trouble}.",
    )
    s.say('"We have to help it!" said {name}.', '"Poor thing," said {friend}. "What can we do?"')
    s.para()
    s.say(
        "{name} had an idea. {He} used a {color} {obj} to help.",
        "{name} thought hard. Then {he} ran to get {adult}.",
        "They worked together, slowly and gently.",
    )
    s.say("At last the {animal_short} was safe.", "Soon the {animal_short} was free and happy.")
    s.say(
        "It looked at them as if to say thank you.",
        "It made a happy little sound and hopped around them.",
    )
    s.maybe(
        0.6,
        "The next day, the {animal_short} came back to visit {name}.",
        "{name} and {friend} felt {good}. Helping felt good.",
    )
    s.para()


def plot_build(s: Story) -> None:
    thing, oops = pick(s.rng, BUILDS)
    s.f.update(thing=thing, oops=oops)
    s.say(
        "{time}, {name} and {friend} decided to make {thing}.",
        '"Let\'s make {thing}!" said {name}. {friend} clapped {fhis} hands.',
    )
    s.say(
        "They worked very hard. It looked wonderful.",
        "They used all their best ideas. It was so pretty.",
    )
    s.say("But then {oops}.", "Just when they were done, {oops}.")
    s.say('{name} felt {bad}. "All our work is gone," {he} said.', "{friend} started to cry.")
    s.para()
    s.say(
        '"We can make it again," said {friend}. "And this time it will be even better."',
        '{adult_cap} came to see. "Mistakes happen. Try again, and help each other."',
    )
    s.say("So they started again.", "They did not give up.")
    s.say(
        "The new one was bigger and better than before.",
        "This time, they were careful, and it worked.",
    )
    s.say("{name} and {friend} looked at it and cheered.", '"We did it together!" they shouted.')
    s.para()


def plot_warning(s: Story) -> None:
    s.say(
        '{adult_cap} said, "{name}, please do not play near the mud today."',
        '"Do not touch the hot stove," {adult} told {name}.',
        '"Stay away from the deep puddle," said {adult}. "You will get all wet."',
    )
    s.say("But {name} was {trait} and did not listen.", "{name} nodded, but {he} was too curious.")
    s.para()
    s.say(
        "When nobody was looking, {he} went closer and closer.",
        "{He} wanted to see what would happen.",
    )
    s.say(
        "Splash! {name} slipped and fell.",
        "Oops! {His} {color} {obj} got dirty and broken.",
        "Then {he} tripped and hurt {his} knee.",
    )
    s.say(
        "{name} began to cry. {He} felt {bad}.",
        '"I should have listened," {name} said in a small voice.',
    )
    s.para()
    s.say(
        '{adult_cap} gave {him} a big hug. "It\'s okay. Now you know why I said no."',
        '{adult_cap} helped {him} clean up and said, "Rules keep you safe."',
    )
    s.say("{name} said sorry.", "{name} promised to listen next time.")
    s.para()


def plot_new_friend(s: Story) -> None:
    s.say(
        "{time}, a new {fdesc} came to {place}. {Fhe_cap} was very quiet.",
        "One day, {name} saw {a_fdesc} sitting alone {at} {place}.",
    )
    s.say(
        "Some of the others laughed because {fhe} looked different.",
        "Nobody wanted to play with {fhim}.",
    )
    s.say(
        '{name} walked over. "Hi! I\'m {name}. What is your name?"',
        '{name} smiled and said, "Do you want to play with my {obj}?"',
    )
    s.say('"I\'m {friend}," {fhe} said softly.', '"My name is {friend}," came a tiny voice.')
    s.para()
    s.say("They played with the {obj} and ran and laughed.", "{friend} was very good at games!")
    s.say(
        "Soon the other children wanted to play too.",
        "{name} learned that {friend} knew many funny songs.",
    )
    s.say("{friend} was not alone anymore.", '"You are my best friend," said {friend}.')
    s.para()


def plot_surprise(s: Story) -> None:
    s.say("It was {adult}'s birthday soon.", "{name} wanted to make {adult} happy.")
    s.say(
        "{name} had a secret plan. {He} would make a surprise!",
        '"Let\'s make a surprise," {name} whispered to {friend}.',
    )
    s.say(
        "They made {food} and a card with a {color} heart.",
        "They picked flowers {at} {place} and baked {food}.",
    )
    s.say(
        "They hid behind the door and waited.",
        "They put everything on the table and waited quietly.",
    )
    s.para()
    s.say(
        'When {adult} came in, they jumped up and shouted, "Surprise!"', '"Surprise!" they yelled.'
    )
    s.say(
        "{adult_cap} was so happy that {ahe} had tears in {ahis} eyes.",
        "{adult_cap} laughed and hugged them both.",
    )
    s.say(
        '"This is the best surprise ever," {ahe} said.', "They ate {food} together and sang songs."
    )
    s.para()


def plot_discovery(s: Story) -> None:
    found, inside = pick(s.rng, FINDS)
    s.f.update(found=found, inside=inside)
    s.say(
        "{time}, {name} found {found} {at} {place}.",
        "While playing {at} {place}, {name} saw {found}.",
    )
    s.say(
        '"What is this?" {he} wondered.',
        '{His} eyes grew big. "Wow! Come and see!" {he} called {friend}.',
    )
    s.say(
        "{name} and {friend} decided to follow it.",
        "They were a little scared, but they were curious too.",
    )
    s.para()
    s.say("They walked and walked.", "They went past the trees and over a little bridge.")
    s.say("At the end, they found {inside}!", "Then, to their surprise, they found {inside}.")
    s.say('"This is amazing!" said {friend}.', "{name} could not believe {his} eyes.")
    s.maybe(
        0.5,
        "They promised to keep it a secret, just for the two of them.",
        "They ran home to tell {adult} everything.",
    )
    s.para()


def plot_skill(s: Story) -> None:
    skill, done = pick(s.rng, SKILLS)
    s.f.update(skill=fill(skill, s.f), done=done)
    s.say(
        "{name} wanted to learn to {skill}.", "{name} really wanted to {skill}, just like {friend}."
    )
    s.say(
        "{He} tried, but it was hard.",
        "The first time, {he} fell down.",
        "{He} tried once, and it did not work.",
    )
    s.say('"I will never learn," {name} said sadly.', "{name} felt {bad} and wanted to stop.")
    s.para()
    s.say(
        '"Keep trying," said {adult}. "Everyone starts small."',
        '{friend} said, "I fell down many times too. Try again!"',
    )
    s.say("So {name} practiced every day.", "{name} tried again. And again. And again.")
    s.say("Then one morning, {he} {done}!", "At last, {name} {done}.")
    s.say('"Look at me!" {he} shouted. Everyone clapped.', "{name} was so proud of {him}self.")
    s.para()


def plot_race(s: Story) -> None:
    s.say(
        "{time}, {name} and {friend} had a race {at} {place}.",
        '"Let\'s race to the big tree!" said {friend}.',
    )
    s.say(
        '"Ready, set, go!" They ran as fast as they could.',
        "They ran and ran. The wind blew in their hair.",
    )
    s.say(
        "{name} was winning. But then {friend} tripped and fell.",
        "Halfway there, {friend} fell and hurt {fhis} knee.",
    )
    s.para()
    s.say(
        "{name} stopped. {He} could win the race... or help {friend}.",
        "{name} did not keep running.",
    )
    s.say(
        "{He} went back and helped {fhim} up.",
        '"Are you okay?" {name} asked, and held out {his} hand.',
    )
    s.say(
        "They walked to the tree together, side by side.",
        "They finished the race together, holding hands.",
    )
    s.say('"You are a true friend," said {friend}.', "Winning was not as important as being kind.")
    s.para()


def plot_weather(s: Story) -> None:
    s.say(
        "{name} and {friend} wanted to have a picnic {at} {place}.",
        "{name} planned to play outside all day with {friend}.",
    )
    s.say(
        "But then dark clouds came, and it started to rain.",
        "But the sky turned gray. Rain began to fall.",
    )
    s.say('"Now our day is ruined," said {name}.', "{name} looked out the window and felt {bad}.")
    s.para()
    s.say(
        '"Let\'s have the picnic inside!" said {friend}.',
        "{adult_cap} had an idea: a picnic on the floor!",
    )
    s.say("They put a blanket on the floor and ate {food}.", "They built a fort and told stories.")
    s.say(
        "When the rain stopped, they saw a big rainbow in the sky.",
        "Soon the sun came back, and there were puddles to jump in!",
    )
    s.say('"Rainy days can be fun too," said {name}.', "It was a good day after all.")
    s.para()


PLOTS = [
    plot_lost,
    plot_sharing,
    plot_fear,
    plot_helping,
    plot_build,
    plot_warning,
    plot_new_friend,
    plot_surprise,
    plot_discovery,
    plot_skill,
    plot_race,
    plot_weather,
]

# ----------------------------------------------------------------------------
# one story, many stories


def make_story(rng: random.Random) -> str:
    hero = make_character(rng)
    friend = make_character(rng, exclude=hero["name"])
    adult, ahe = pick(rng, ADULTS)
    place, at = pick(rng, PLACES)
    animal = pick(rng, TROUBLES)[0]
    f = dict(hero)
    f.update(
        He=cap(hero["he"]),
        His=cap(hero["his"]),
        friend=friend["name"],
        fhe=friend["he"],
        fhis=friend["his"],
        fhim=friend["him"],
        Fhe_cap=cap(friend["he"]),
        fdesc=friend["desc"],
        a_fdesc=friend["a_desc"],
        adult=adult,
        adult_cap=cap(adult),
        ahe=ahe,
        ahis="her" if ahe == "she" else "his",
        place=place,
        at=at,
        obj=pick(rng, OBJECTS),
        color=pick(rng, COLORS),
        time=pick(rng, TIMES),
        good=pick(rng, FEELINGS_GOOD),
        bad=pick(rng, FEELINGS_BAD),
        food=pick(rng, FOODS),
        helper=pick(rng, ANIMALS),
        animal_short=animal.split()[-1],
    )
    s = Story(rng, f)
    s.say(*OPENERS)
    s.maybe(
        0.7,
        "{He} was very {trait}.",
        "{He} liked to play {at} {place}.",
        "{He} loved {food} more than anything.",
        "Everyone knew {name} was {trait}.",
    )
    s.maybe(
        0.5,
        "{name} had a friend named {friend}, {a_fdesc}.",
        "{His} best friend was {friend}.",
        "{friend} lived next door.",
    )
    s.para()
    plots = [pick(rng, PLOTS)]
    if rng.random() < 0.25:  # sometimes two episodes in one story
        second = pick(rng, PLOTS)
        if second is not plots[0]:
            plots.append(second)
    for plot in plots:
        s.f.update(obj=pick(rng, OBJECTS), color=pick(rng, COLORS), time=pick(rng, TIMES))
        plot(s)
    if rng.random() < 0.35:
        s.say(*MORALS)
    s.say(*ENDINGS)
    return s.text()


def make_stories(n_stories: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [make_story(rng) for _ in range(n_stories)]


# ----------------------------------------------------------------------------
# CLI


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__ + " Stories are separated by a blank line.")
    ap.add_argument("--n-stories", type=int, default=8000, help="number of stories (default 8000)")
    ap.add_argument("--seed", type=int, default=1337, help="random seed (default 1337)")
    ap.add_argument("-o", "--output", type=Path, default=None, help="output .txt (default stdout)")
    args = ap.parse_args(argv)
    if args.n_stories <= 0:
        ap.error("--n-stories must be positive")
    t0 = time.perf_counter()
    text = "\n\n".join(make_stories(args.n_stories, args.seed)) + "\n"
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="ascii")
        dt = time.perf_counter() - t0
        print(
            f"wrote {args.n_stories} stories, {len(text):,} bytes to {args.output} in {dt:.1f}s",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
