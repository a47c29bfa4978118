"""Word lists for the prompt tagger (filters/lib/tagging.py). Lowercase, singular nouns, all verb forms.

Written for the category definitions, not fitted to any benchmark file: a colour word is any common
colour name, a shape word any geometric shape or size, a texture word a material or a tactile surface.
"""

from __future__ import annotations


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


COLOR = _words("""
    red orange yellow green blue purple violet pink brown black white gray grey silver gold golden beige
    teal turquoise cyan magenta maroon navy crimson scarlet ivory cream tan khaki olive lavender lilac
    indigo amber burgundy coral emerald ruby charcoal peach mint lime salmon rust ochre sepia fuchsia
    aqua azure cobalt cerulean vermilion mauve taupe periwinkle chartreuse blond blonde auburn
    reddish bluish greenish yellowish pinkish purplish brownish grayish greyish whitish blackish orangish
    multicolored multicoloured colorful colourful rainbow pastel monochrome
""")

SHAPE = _words("""
    round circular square rectangular triangular oval spherical cubic cuboid cylindrical conical pyramidal
    hexagonal pentagonal octagonal polygonal elliptical oblong crescent curved curvy flat pointed pointy
    spiral arched angular rounded tubular boxy domed zigzag teardrop shaped
    big small large tiny huge giant gigantic enormous massive little miniature mini tall short long wide
    narrow thin thick slim slender skinny fat petite oversized colossal compact broad stout lanky
""")

TEXTURE = _words("""
    wooden wood metal metallic steel iron aluminum aluminium tin chrome copper bronze brass glass glassy
    plastic leather leathery fabric cloth cotton wool woolen woollen woolly silk silken silky satin velvet
    velvety denim linen lace lacy suede fur furry fuzzy fluffy feathery feathered knitted knit woven
    wicker rattan bamboo straw paper cardboard rubber rubbery ceramic porcelain clay terracotta stone stony
    marble granite concrete brick cement crystal crystalline smooth rough bumpy coarse shiny glossy matte
    polished rusty rusted scaly hairy prickly spiky slimy grainy gritty sandy wrinkled crumpled textured
    ribbed quilted embroidered sequined studded striped checkered plaid tweed corduroy porous jagged
""")

# Adjectives that quantify, point, order or classify rather than describe; they bind to nouns but
# are no attribute an image must get right ("the other dog", "a famous landmark", "a national park").
NOT_ATTRIBUTE = _words("""
    other another many much more most several few same such own only next last first second third left
    right top bottom front back middle main whole entire certain various different each every both
    possible real actual new favorite favourite famous national local foreign international unique
    perfect special daily typical usual personal
""")

NUMBER = _words("""
    one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen
    seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred dozen
""")
# Heads after a digit that measure rather than count ("4k resolution", "5 pm").
NOT_COUNTED = _words("k pm am mm cm px fps percent % degree resolution p x")

# Verbs that only say where a thing is: "a dog lying on a rug" is a relation between dog and rug.
POSTURE_VERBS = _words("""
    sit sits sat sitting stand stands stood standing lie lies lay lying lain rest rests rested resting
    hang hangs hung hanging stay stays stayed staying place places placed placing put puts putting
    set sets setting locate located position positioned perch perches perched perching lean leans
    leaned leaning mount mounted park parked lay laid float floats floated floating balanced propped
    draped stacked piled scattered tucked nestled
""")
# Posture, being and having: they place or describe, they are no interaction between entities
# (nor is "trending on artstation", a stock phrase of image prompts).
STATIVE_VERBS = POSTURE_VERBS | _words("""
    be is are was were am been being 's 're 'm have has had do does did done
    seem seems seemed look looks looked appear appears appeared become becomes became
    remain remains remained contain contains contained feature features featured show shows showing
    shown depict depicts depicted make made makes making get gets got trending
""")
COPULA = _words("is are was were be been being 's 're am seems seem seemed looks look looked appears appear "
                "appeared becomes become became remains remain")

# (words, relation): matched on lowercase tokens. Longer phrases are tried first.
STRONG_RELATIONS = [
    ("hidden by", "3d_spatial"), ("hidden behind", "3d_spatial"), ("obscured by", "3d_spatial"),
    ("occluded by", "3d_spatial"), ("blocked by", "3d_spatial"), ("partially hidden", "3d_spatial"),
    ("in front of", "3d_spatial"), ("behind", "3d_spatial"), ("in the foreground", "3d_spatial"),
    ("in the background", "3d_spatial"), ("far behind", "3d_spatial"),
    ("left of", "spatial"), ("right of", "spatial"), ("left side of", "spatial"), ("right side of", "spatial"),
    ("top of", "spatial"), ("bottom of", "spatial"), ("side of", "spatial"), ("next to", "spatial"),
    ("beside", "spatial"), ("besides", "spatial"), ("alongside", "spatial"), ("near", "spatial"),
    ("close to", "spatial"), ("adjacent to", "spatial"), ("above", "spatial"), ("below", "spatial"),
    ("beneath", "spatial"), ("underneath", "spatial"), ("atop", "spatial"), ("between", "spatial"),
    ("across from", "spatial"), ("opposite", "spatial"), ("to the left", "spatial"),
    ("to the right", "spatial"), ("on the left", "spatial"), ("on the right", "spatial"),
]
# Prepositions that are a 2D relation only between two things ("a cup on a table", "a dog lying on a
# rug"), not where they place an action ("a man playing guitar on a corner", "talking on the phone").
WEAK_RELATIONS = _words("on under over by against atop onto inside")

# Nouns an image cannot show. Suffix rules in tag_rules cover -ness, -ism, -ity and the like.
ABSTRACT_NOUNS = _words("""
    idea concept thought feeling emotion love hate hatred fear anger joy hope freedom justice peace truth
    knowledge wisdom time life meaning purpose reason opinion belief theory philosophy religion faith
    culture society economy politics policy law right value amount number problem solution question answer
    issue matter fact information data advice tip way method strategy plan goal success failure experience
    skill education learning history future past memory imagination creativity inspiration motivation
    relationship trust respect courage patience responsibility importance difference benefit advantage
    effect impact result cause argument debate discussion explanation definition description essay summary
    article paragraph sentence grammar language term example list step process system approach business
    marketing management career job price cost budget tax investment profit market industry health mind
    soul spirit chance luck risk safety security privacy software code program algorithm function
    variable equation math mathematics science research study analysis statistics percentage rate growth
    development change improvement progress sustainability diversity equality democracy government
    election consequence situation condition circumstance context aspect factor role task assignment
    homework exam grade course lesson topic subject story poem song music sound noise taste smell flavor
    flavour scent aroma stuff something anything everything nothing someone anyone thing point level
    kind type sort version topic essay email report review feedback rule guide tutorial instruction
    recipe content service product customer user client account password website app application
""")
# Only suffixes that rarely end a thing: -tion, -ment and -ence also make "station", "monument", "fence".
ABSTRACT_SUFFIXES = ("ness", "ism", "ity", "ology", "ship", "hood")
CONCRETE_EXCEPTIONS = _words("""
    city ship spaceship battleship starship airship warship flagship hood neighborhood neighbourhood
    university facility
""")

ABSTRACT_VERBS = _words("""
    think thinks thought thinking believe believes believed know knows knew known understand understands
    mean means meant want wants wanted need needs needed wish wishes hope hopes consider considers explain
    explains describe describes define defines discuss discusses argue argues decide decides suggest
    suggests recommend recommends learn learns remember remembers forget forgets prove proves agree
    agrees improve improves manage manages ensure ensures provide provides require requires include
    includes involve involves allow allows compare compares analyze analyse analyzes calculate calculates
    solve solves summarize summarise summarizes translate translates list lists tell tells ask asks
    feel feels felt prefer prefers care cares deserve deserves promote promotes develop develops
    generate generates implement implements optimize identify identifies determine determines evaluate
    evaluates assess assesses predict predicts estimate estimates rewrite rephrase classify
""")
ABSTRACT_ADJECTIVES = _words("""
    important necessary possible impossible true false wrong correct incorrect likely unlikely available
    essential difficult easy effective efficient useful helpful relevant significant similar specific
    general sure able unable legal illegal economic political social financial mental emotional cultural
    moral ethical historical theoretical abstract logical scientific academic professional personal
    public private online virtual major minor basic key better best worse worst good bad great interesting
    certain various
""")
VISUAL_ADJECTIVES = _words("""
    bright dark shiny glowing luminous sunny cloudy foggy misty rainy snowy stormy vivid pale transparent
    translucent reflective sparkling glittering dusty wet old young ancient modern vintage rustic ornate
    elegant cute beautiful detailed realistic photorealistic cinematic dramatic neon lush dense empty
    crowded sleek fluorescent illuminated lit moonlit sunlit blurry sharp hazy frozen icy burning
""")
PERSONAL_PRONOUNS = _words("i you we me us my your our myself yourself ourselves")
# Imperatives that ask for a picture; any other sentence-initial imperative asks for an answer.
DEPICT_VERBS = _words("draw paint create generate imagine show render make design illustrate sketch depict "
                      "photograph picture visualize visualise")
