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
# vocabulary of the story world: scripts/story_words.py, found next to this file whether run
# as a script or loaded by path (importlib, the tests)

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
from story_words import (  # noqa: E402
    ADULTS,
    ANIMAL_LOOKS,
    ANIMALS,
    BAKED,
    BOYS,
    BUILDS,
    COLORS,
    ENDINGS,
    FEARS,
    FEELINGS_BAD,
    FEELINGS_GOOD,
    FINDS,
    FOODS,
    GIRLS,
    MORALS,
    NOISES,
    OBJECTS,
    OPENERS,
    PET_NAMES,
    PETS,
    PLACES,
    PLANTS,
    SAID,
    SCENES,
    SKILLS,
    SPOTS,
    TIMES,
    TRAITS,
    TRIPS,
    TROUBLES,
    WARNINGS,
)

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
        template = pick(self.rng, choices)
        if "{said}" in template:
            self.f["said"] = pick(self.rng, SAID)
        self.cur.append(fill(template, self.f))

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

# fmt: off


def plot_lost(s: Story) -> None:
    s.say("{name} had a {color} {obj}. {He} loved it very much.",
          "{name}'s favorite thing was a {color} {obj}.",
          "{adult_cap} gave {name} a {color} {obj}, and {he} took it everywhere.")
    s.say("{time}, {name} took the {obj} to {place}.",
          "{time}, {name} played with the {obj} {at} {place}.")
    s.say("But when it was time to go home, the {obj} was gone!",
          "Then {name} looked down. The {obj} was not there!")
    s.say('"Oh no! Where is my {obj}?" {name} cried.', '"My {obj}! I lost my {obj}!" said {name}.')
    s.para()
    s.say('{friend} saw that {name} was {bad}. "Don\'t worry, I will help you look," {fhe} said.',
          '{friend} came running. "What is wrong?" {fhe} asked. {name} told {fhim} everything.')
    for spot in s.rng.sample(SPOTS, 2):
        s.say(f"They looked {spot}, but the {{obj}} was not there.",
              f"They searched {spot}. No {{obj}}.")
    s.say('Then {friend} pointed and shouted, "Look! There it is!"',
          "Suddenly {name} heard a little sound. A {helper} was sitting right next to the {obj}!")
    s.say('{name} picked up the {obj} and hugged it. "Thank you, {friend}!" {he} said.',
          "{name} was so {good}. {He} held the {obj} tight and smiled.")
    s.para()


def plot_sharing(s: Story) -> None:
    s.say("{name} had a new {color} {obj}.", "{adult_cap} bought {name} a {color} {obj}.")
    s.say('{friend} wanted to play with it too. "Can I have a turn?" {fhe} asked.',
          '{friend} saw the {obj} and said, "Wow! Can we play together?"')
    s.say('But {name} held it close. "No! It is mine!" {he} said.',
          '"No, you can\'t," said {name}. "You might break it."')
    s.say("{friend} felt {bad} and walked away.", "{friend}'s face fell, and {fhe} sat down alone.")
    s.para()
    s.say('{adult_cap} saw what happened. "{name}, how would you feel if {friend} '
          'did not share with you?"',
          "Later, {name} played alone. The {obj} was not as fun without a friend.")
    s.say("{name} thought about it for a long time.",
          "{name} looked at {friend} and felt bad inside.")
    s.say('{He} walked over and said, "I am sorry. Let\'s play with the {obj} together."',
          '"Here, {friend}," {name} said softly. "You can go first."')
    s.say("{friend} smiled a big smile. They took turns, and it was much more fun.",
          "They played all afternoon, laughing and running {at} {place}.")
    s.para()


def plot_fear(s: Story) -> None:
    fear, why = pick(s.rng, FEARS)
    s.f.update(fear=fear, Why=cap(why))
    s.say("{name} was afraid of {fear}.", "There was one thing {name} did not like: {fear}.")
    s.say('{He} said, "I can\'t! {Why}!"', '"I don\'t want to," {name} said. "{Why}."')
    s.para()
    s.say('{friend} held {his} hand. "I will be right here with you," {fhe} said.',
          '{adult_cap} knelt down and said, "Take a deep breath. You are braver than you think."')
    s.say("{name} closed {his} eyes and counted to three.",
          "{name} took one small step, then another.")
    s.say("It was not so bad after all!",
          "And then... it was fun!",
          "{His} heart beat fast, but {he} did it!")
    s.say('"I did it! I really did it!" {name} shouted.', '{name} laughed. "Can we do it again?"')
    s.para()


def plot_helping(s: Story) -> None:
    animal, trouble, sound = pick(s.rng, TROUBLES)
    s.f.update(animal=animal, trouble=trouble, sound=sound, animal_short=animal.split()[-1])
    s.say("{time}, {name} was walking {at} {place} with {friend}.",
          "{time}, {name} and {friend} went to {place}.")
    s.say("They heard a sad sound. It was {animal}, {trouble}, {sound}.",
          "Suddenly they saw {animal}. It was {trouble}.")
    s.say('"We have to help it!" said {name}.', '"Poor thing," said {friend}. "What can we do?"')
    s.para()
    s.say("{name} had an idea. {He} used a {color} {obj} to help.",
          "{name} thought hard. Then {he} ran to get {adult}.",
          "They worked together, slowly and gently.")
    s.say("At last the {animal_short} was safe.", "Soon the {animal_short} was free and happy.")
    s.say("It looked at them as if to say thank you.",
          "It made a happy little sound and hopped around them.")
    s.maybe(0.6,
            "The next day, the {animal_short} came back to visit {name}.",
            "{name} and {friend} felt {good}. Helping felt good.")
    s.para()


def plot_build(s: Story) -> None:
    thing, oops = pick(s.rng, BUILDS)
    s.f.update(thing=thing, oops=oops)
    s.say("{time}, {name} and {friend} decided to make {thing}.",
          '"Let\'s make {thing}!" said {name}. {friend} clapped {fhis} hands.')
    s.say("They worked very hard. It looked wonderful.",
          "They used all their best ideas. It was so pretty.")
    s.say("But then {oops}.", "Just when they were done, {oops}.")
    s.say('{name} felt {bad}. "All our work is gone," {he} said.', "{friend} started to cry.")
    s.para()
    s.say('"We can make it again," said {friend}. "And this time it will be even better."',
          '{adult_cap} came to see. "Mistakes happen. Try again, and help each other."')
    s.say("So they started again.", "They did not give up.")
    s.say("The new one was bigger and better than before.",
          "This time, they were careful, and it worked.")
    s.say("{name} and {friend} looked at it and cheered.", '"We did it together!" they shouted.')
    s.para()


def plot_warning(s: Story) -> None:
    rule, oops = pick(s.rng, WARNINGS)
    rule, oops = fill(rule, s.f), fill(oops, s.f)
    s.f.update(rule=rule, oops=oops, Oops=cap(oops))
    s.say('{adult_cap} said, "{name}, please {rule}."', '"Please {rule}," {adult} told {name}.')
    s.say("But {name} was curious and did not listen.", "{name} nodded, but {he} forgot very soon.")
    s.para()
    s.say("When nobody was looking, {he} went closer and closer.",
          "{He} wanted to see what would happen.")
    s.say("Then {oops}.", "Oh no! {Oops}.")
    s.say("{name} began to cry. {He} felt {bad}.",
          '"I should have listened," {name} said in a small voice.')
    s.para()
    s.say("{adult_cap} gave {him} a big hug. \"It's okay. Now you know why I said no.\"",
          '{adult_cap} helped {him} clean up and said, "Rules keep you safe."')
    s.say("{name} said sorry.", "{name} promised to listen next time.")
    s.para()


def plot_new_friend(s: Story) -> None:
    s.say("{time}, a new {fdesc} came to {place}. {Fhe_cap} was very quiet.",
          "One day, {name} saw {a_fdesc} sitting alone {at} {place}.")
    s.say("Some of the others laughed because {fhe} looked different.",
          "Nobody wanted to play with {fhim}.")
    s.say('{name} walked over. "Hi! I\'m {name}. What is your name?"',
          '{name} smiled and said, "Do you want to play with my {obj}?"')
    s.say('"I\'m {friend}," {fhe} said softly.', '"My name is {friend}," came a tiny voice.')
    s.para()
    s.say("They played with the {obj} and ran and laughed.", "{friend} was very good at games!")
    s.say("Soon the other children wanted to play too.",
          "{name} learned that {friend} knew many funny songs.")
    s.say("{friend} was not alone anymore.", '"You are my best friend," said {friend}.')
    s.para()


def plot_surprise(s: Story) -> None:
    s.say("It was {adult}'s birthday soon.", "{name} wanted to make {adult} happy.")
    s.say("{name} had a secret plan. {He} would make a surprise!",
          '"Let\'s make a surprise," {name} whispered to {friend}.')
    s.say("They made {food} and a card with a {color} heart.",
          "They picked flowers {at} {place} and got some {food}.")
    s.say("They hid behind the door and waited.",
          "They put everything on the table and waited quietly.")
    s.para()
    s.say('When {adult} came in, they jumped up and shouted, "Surprise!"',
          '"Surprise!" they yelled.')
    s.say("{adult_cap} was so happy that {ahe} had tears in {ahis} eyes.",
          "{adult_cap} laughed and hugged them both.")
    s.say('"This is the best surprise ever," {ahe} said.',
          "They ate {food} together and sang songs.")
    s.para()


def plot_discovery(s: Story) -> None:
    found, inside = pick(s.rng, FINDS)
    s.f.update(found=found, inside=inside)
    s.say("{time}, {name} found {found} {at} {place}.",
          "While playing {at} {place}, {name} saw {found}.")
    s.say('"What is this?" {he} wondered.',
          '{His} eyes grew big. "Wow! Come and see!" {he} called {friend}.')
    s.say("{name} and {friend} decided to follow it.",
          "They were a little scared, but they were curious too.")
    s.para()
    s.say("They walked and walked.", "They went past the trees and over a little bridge.")
    s.say("At the end, they found {inside}!", "Then, to their surprise, they found {inside}.")
    s.say('"This is amazing!" said {friend}.', "{name} could not believe {his} eyes.")
    s.maybe(0.5,
            "They promised to keep it a secret, just for the two of them.",
            "They ran home to tell {adult} everything.")
    s.para()


def plot_skill(s: Story) -> None:
    skill, done = pick(s.rng, SKILLS)
    s.f.update(skill=fill(skill, s.f), done=done)
    s.say("{name} wanted to learn to {skill}.",
          "{name} really wanted to {skill}, just like {friend}.")
    s.say("{He} tried, but it was hard.",
          "The first time, {he} fell down.",
          "{He} tried once, and it did not work.")
    s.say('"I will never learn," {name} said sadly.', "{name} felt {bad} and wanted to stop.")
    s.para()
    s.say('"Keep trying," said {adult}. "Everyone starts small."',
          '{friend} said, "I fell down many times too. Try again!"')
    s.say("So {name} practiced every day.", "{name} tried again. And again. And again.")
    s.say("Then one morning, {he} {done}!", "At last, {name} {done}.")
    s.say('"Look at me!" {he} shouted. Everyone clapped.', "{name} was so proud of {him}self.")
    s.para()


def plot_race(s: Story) -> None:
    s.say("{time}, {name} and {friend} had a race {at} {place}.",
          '"Let\'s race to the big tree!" said {friend}.')
    s.say('"Ready, set, go!" They ran as fast as they could.',
          "They ran and ran. The wind blew in their hair.")
    s.say("{name} was winning. But then {friend} tripped and fell.",
          "Halfway there, {friend} fell and hurt {fhis} knee.")
    s.para()
    s.say("{name} stopped. {He} could win the race... or help {friend}.",
          "{name} did not keep running.")
    s.say("{He} went back and helped {fhim} up.",
          '"Are you okay?" {name} asked, and held out {his} hand.')
    s.say("They walked to the tree together, side by side.",
          "They finished the race together, holding hands.")
    s.say('"You are a true friend," said {friend}.', "Winning was not as important as being kind.")
    s.para()


def plot_weather(s: Story) -> None:
    s.say("{name} and {friend} wanted to have a picnic {at} {place}.",
          "{name} planned to play outside all day with {friend}.")
    s.say("But then dark clouds came, and it started to rain.",
          "But the sky turned gray. Rain began to fall.")
    s.say('"Now our day is ruined," said {name}.', "{name} looked out the window and felt {bad}.")
    s.para()
    s.say('"Let\'s have the picnic inside!" said {friend}.',
          "{adult_cap} had an idea: a picnic on the floor!")
    s.say("They put a blanket on the floor and ate {food}.", "They built a fort and told stories.")
    s.say("When the rain stopped, they saw a big rainbow in the sky.",
          "Soon the sun came back, and there were puddles to jump in!")
    s.say('"Rainy days can be fun too," said {name}.', "It was a good day after all.")
    s.para()


def plot_baking(s: Story) -> None:
    s.f["baked"] = pick(s.rng, BAKED)
    s.say("{time}, {adult} said, \"Would you like to help me bake {baked}?\"",
          "{name} wanted to bake {baked} with {adult}.")
    s.say("{name} put on a big apron. {He} was ready!", "\"Yes, please!\" {name} {said}.")
    s.say("They mixed flour, eggs and milk in a big bowl.",
          "{name} poured the sugar and stirred and stirred.")
    s.say("Oops! Some flour went on {name}'s nose. Everyone laughed.",
          "The kitchen was a big mess, but it smelled so good.")
    s.para()
    s.say("They waited and waited for the oven to be done.", "Soon the whole house smelled sweet.")
    s.say("At last, the {baked} were ready. They were warm and yummy.",
          "When they were done, {name} shared them with {friend}.")
    s.say("\"This is the best thing I ever made,\" {name} {said}.",
          "\"Thank you for helping me,\" {adult} {said}, and gave {him} a hug.")
    s.para()


def plot_lost_pet(s: Story) -> None:
    s.say("{name} had a pet {pet} called {petname}.", "{petname} was {name}'s pet {pet}.")
    s.say("{time}, the gate was open, and {petname} was gone!",
          "One morning, {name} could not find {petname} anywhere.")
    s.say("\"{petname}! Where are you?\" {name} {said}.",
          "{name} felt {bad}. {He} called and called.")
    s.para()
    s.say("{name} and {friend} made signs and put them on the trees.",
          "{friend} helped {him} look {at} {place}.")
    s.say("They asked the neighbors, but nobody had seen {petname}.",
          "They looked {spot}, but {petname} was not there.")
    s.say("Then they heard a happy little sound. It was {petname}!",
          "At last they found {petname} {spot}, fast asleep.")
    s.say("{name} hugged {petname} tight. \"Never run away again,\" {he} {said}.",
          "{petname} licked {name}'s face. {name} laughed and laughed.")
    s.para()


def plot_night(s: Story) -> None:
    noise, cause = pick(s.rng, NOISES)
    s.f.update(noise=noise, cause=cause)
    s.say("That night, {name} could not sleep.", "It was late, and the house was dark.")
    s.say("Then {he} heard {noise}.", "Suddenly there was {noise}.")
    s.say("\"Who is there?\" {name} {said} in a small voice.",
          "{name} pulled the blanket over {his} head.")
    s.para()
    s.say("{He} took {his} little lamp and went to look.", "{name} went to wake up {adult}.")
    s.say("It was only {cause}!", "They looked together. It was just {cause}.")
    s.say("{name} giggled. \"I was scared of nothing!\"", "{adult_cap} smiled and tucked {him} in.")
    s.say("Soon {he} was fast asleep.", "{name} closed {his} eyes and slept until morning.")
    s.para()


def plot_wish(s: Story) -> None:
    s.say("{time}, {name} found a small {color} star {at} {place}.",
          "{time}, a tiny fairy flew down to {name}.")
    s.say("A little voice said, \"You can make one wish.\"",
          "\"I can give you one wish,\" it {said}.")
    s.say("{name} thought hard. {He} could wish for toys, or {food}, or a castle.",
          "{name} wanted a hundred toys. But then {he} thought of {friend}.")
    s.para()
    s.say("{friend} was sick and had to stay in bed.",
          "{friend} was sad because {fhis} {obj} was broken.")
    s.say("So {name} said, \"I wish {friend} could be happy again.\"",
          "\"I wish for my friend to feel better,\" {name} {said}.")
    s.say("The star glowed, and the wish came true.", "The fairy smiled and waved her little wand.")
    s.say("{friend} ran outside to play, and {name} was the happiest of all.",
          "The next day, {friend} was laughing again.")
    s.para()


def plot_garden(s: Story) -> None:
    s.f["plant"] = pick(s.rng, PLANTS)
    s.say("{adult_cap} gave {name} a tiny seed.",
          "{name} found a seed and planted it in the garden.")
    s.say("\"If you take care of it, it will grow into {plant},\" {adult} {said}.",
          "{name} wanted it to grow into {plant}.")
    s.say("Every day, {name} gave it water.", "{He} watered it and sang it a little song.")
    s.para()
    s.say("At first, nothing happened. {name} was {bad}.",
          "Days went by, and the ground stayed brown.")
    s.say("\"Be patient,\" {friend} {said}.", "But {name} did not give up.")
    s.say("Then one morning, a little green leaf came up!", "Slowly, a tiny green sprout grew.")
    s.say("By summer, it was {plant}, big and strong.", "Soon it grew into {plant}.")
    s.say("{name} was so proud. Waiting was hard, but it was worth it.",
          "{name} shared it with everyone on the street.")
    s.para()


def plot_trip(s: Story) -> None:
    where, saw = pick(s.rng, TRIPS)
    s.f.update(where=where, saw=saw)
    s.say("{time}, {name}'s family went on a trip to {where}.",
          "{adult_cap} said, \"Pack your bag! We are going to {where}!\"")
    s.say("{name} was so {good} that {he} could not sit still.",
          "{name} took {his} {color} {obj} and {friend} came too.")
    s.say("The ride was long, so they sang songs.", "On the way, they counted cows and clouds.")
    s.para()
    s.say("At {where}, they saw {saw}.", "There were so many things to see: {saw}.")
    s.say("\"Look at that!\" {name} {said}, pointing.", "{friend} took a picture of everything.")
    s.maybe(0.5, "Then {name} dropped {his} {obj}, but a kind man gave it back.",
            "They had a picnic with {food} under a big tree.")
    s.say("On the way home, {name} fell asleep in the car.",
          "It was a day {he} would never forget.")
    s.para()

# fmt: on


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
    plot_baking,
    plot_lost_pet,
    plot_night,
    plot_wish,
    plot_garden,
    plot_trip,
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
    # fmt: off
    f.update(
        He=cap(hero["he"]), His=cap(hero["his"]), friend=friend["name"], fhe=friend["he"],
        fhis=friend["his"], fhim=friend["him"], Fhe_cap=cap(friend["he"]), fdesc=friend["desc"],
        a_fdesc=friend["a_desc"], adult=adult, adult_cap=cap(adult), ahe=ahe,
        ahis="her" if ahe == "she" else "his", place=place, at=at, obj=pick(rng, OBJECTS),
        color=pick(rng, COLORS), time=pick(rng, TIMES), good=pick(rng, FEELINGS_GOOD),
        bad=pick(rng, FEELINGS_BAD), food=pick(rng, FOODS), helper=pick(rng, ANIMALS),
        animal_short=animal.split()[-1], pet=pick(rng, PETS),
        petname=pick(rng, [n for n in PET_NAMES if n not in (hero["name"], friend["name"])]),
        spot=pick(rng, SPOTS), said="said",
    )
    # fmt: on
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
        s.maybe(0.4, *SCENES)
        plot(s)
    last = plots[-1].__name__.removeprefix("plot_")
    morals = [m for name, m in MORALS if name == last]
    if morals and rng.random() < 0.5:
        s.say(*morals)
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
