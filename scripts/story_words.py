"""Word lists and sentence tables of make_stories.py's story world (plain data, no logic)."""

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
MORALS = [  # (plot name, moral); a story may end with the moral of its last plot
    ("lost", "The lesson is simple: take care of the things you love."),
    ("sharing", "The moral of the story is: sharing makes everyone happy."),
    ("fear", "And so {name} learned that being brave does not mean you are not scared."),
    ("helping", "The moral of the story is to always be kind, even to the smallest animal."),
    ("build", "{name} learned that trying again is the best way to learn."),
    ("warning", "From that day on, {name} always listened to {adult}."),
    ("new_friend", "{name} knew that a kind word can make a new friend."),
    ("skill", "{name} learned that practice makes things easier."),
    ("race", "Being kind is better than winning."),
    ("garden", "{name} learned that good things take time."),
    ("lost_pet", "{name} learned to always close the gate."),
    ("wish", "{name} learned that making others happy is the best wish of all."),
]
SAID = ["said", "said", "asked", "shouted", "whispered", "replied", "called", "cried", "laughed",
        "giggled", "answered", "yelled"]
SCENES = [
    "The sun was shining and the birds were singing.", "The wind was cool, and the leaves danced.",
    "Big white clouds floated across the blue sky.", "The grass was soft and green.",
    "Everything was quiet and still.", "The air smelled like flowers and rain.",
    "A little bee buzzed from flower to flower.", "The trees were tall and very old.",
    "Yellow leaves fell slowly to the ground.", "Snow covered everything like a white blanket.",
    "The water sparkled in the sunlight.", "Far away, a dog was barking.",
    "It was a perfect day to play outside.", "The moon was big and round that night.",
]
PLANTS = ["a sunflower", "a tomato plant", "a pumpkin", "a little apple tree", "a rose bush",
          "a row of carrots", "a bean stalk"]
TRIPS = [("the sea", "shiny fish and a crab that walked sideways"),
         ("the mountains", "a waterfall and a deer with a baby"),
         ("the zoo", "a tall giraffe and a sleepy lion"),
         ("the farm", "pink pigs, woolly sheep and a noisy rooster"),
         ("the city", "tall buildings and a big red bus"),
         ("a lake", "ducks, frogs and a little wooden boat")]
NOISES = [("a scratching sound", "a little mouse looking for cheese"),
          ("a tap, tap, tap on the window", "a branch moving in the wind"),
          ("a soft thump", "the cat jumping off the shelf"),
          ("a strange howl", "the wind blowing through the old chimney"),
          ("a squeak in the hall", "Grandpa's slippers on the wooden floor")]
BAKED = ["cookies", "muffins", "cupcakes", "little pies", "sweet buns", "gingerbread men"]
WARNINGS = [
    ("do not play near the mud today", "{he} fell in the mud, and {his} clothes got dirty"),
    ("do not climb on the shelf", "the shelf shook, and a jar fell and broke"),
    ("stay away from the deep puddle", "{he} stepped in, and {his} shoes got all wet"),
    ("do not run near the pool", "{he} slipped and hurt {his} knee"),
    ("do not eat all the {food}", "{his} tummy started to hurt"),
    ("do not touch the bees", "a bee buzzed loudly and chased {him} away"),
    ("keep the gate closed", "the goat ran out and ate the flowers"),
]
PETS = ["dog", "cat", "bunny", "puppy", "kitten", "hamster", "turtle", "parrot", "goat"]
SPOTS = [
    "under the bench", "behind a big rock", "in the tall grass", "under a pile of leaves",
    "near the fence", "inside an old box", "behind the door", "under the bed", "in the sandbox",
    "by the pond", "inside a flower pot", "under the slide",
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
