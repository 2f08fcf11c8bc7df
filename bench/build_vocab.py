"""Build the trait vocabulary shipped in retrieval/vocab_data/vocab.json.

Users do not have ../shared, so the vocabulary the extractor and the search use is a
small derived file shipped in the package; this script is how it is made, from:

- FNA glossary (term -> category, via FLOPO): which descriptive terms exist and what they
  describe (shape, coloration, arrangement, ...). Only the term and a mapped category are
  kept (no definitions, no IDs). FLOPO records its license as "not recorded": pass
  --no-fna to build without it.
- FloraTraiter term lists (MIT, (c) 2023 Raphael LaFrance): organ/part names with their
  normal forms, and margin, surface, venation, shape, habit, duration terms.
- Plant Ontology (CC BY 4.0): organ ids, exact synonyms and plural forms.
- PATO (CC BY 3.0): quality ids, exact synonyms and opposites (glabrous vs hairy).
- Hand-written tables below: the organ groups and part-of links, plain-English glossary
  synonyms ("saw-toothed" for serrate), and French equivalents of common organs and states.

    .venv/bin/python bench/build_vocab.py [--shared ../shared/data] [--no-fna]
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import unicodedata
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "retrieval" / "flora" / "vocab_data" / "vocab.json"

# --------------------------------------------------------------------------- organs
# canonical organ: (group, parent, English forms, French forms). Parent = the organ it is
# part of, used to score "blade" against "leaves" and to judge organ attribution.
ORGANS: dict[str, tuple[str, str | None, list[str], list[str]]] = {
    "plant": ("plant", None, ["plant", "plants", "individuals"], ["plante", "plantes", "appareil végétatif"]),
    "root": ("root", None, ["root", "roots", "radix", "rootlets"], ["racine", "racines", "radicelles"]),
    "rhizome": ("stem", None, ["rhizome", "rhizomes", "rootstock"], ["rhizome", "rhizomes", "souche"]),
    "tuber": ("stem", None, ["tuber", "tubers"], ["tubercule", "tubercules"]),
    "bulb": ("stem", None, ["bulb", "bulbs"], ["bulbe", "bulbes"]),
    "stolon": ("stem", None, ["stolon", "stolons", "runners"], ["stolon", "stolons"]),
    "caudex": ("stem", None, ["caudex", "caudices"], ["caudex"]),
    "stem": ("stem", None, ["stem", "stems", "culm", "culms", "shoots", "shoot", "axis", "axes", "main stem", "stemlets"], ["tige", "tiges", "chaume", "chaumes", "pousse", "pousses", "axe", "axes"]),
    "trunk": ("stem", "stem", ["trunk", "trunks", "bole", "boles"], ["tronc", "troncs", "fût", "fûts"]),
    "branch": ("stem", "stem", ["branch", "branches"], ["branche", "branches"]),
    "twig": ("stem", "branch", ["twig", "twigs", "branchlet", "branchlets", "leafy twigs", "young branches", "young twigs"],
             ["rameau", "rameaux", "ramille", "ramilles", "ramule", "ramules", "jeunes rameaux"]),
    "internode": ("stem", "stem", ["internode", "internodes"], ["entre-nœud", "entre-nœuds", "entrenœud", "entrenœuds", "entre-noeuds", "entrenoeuds"]),
    "node": ("stem", "stem", ["node", "nodes"], ["nœud", "nœuds", "noeud", "noeuds"]),
    "bark": ("stem", "stem", ["bark", "inner bark", "outer bark", "slash"], ["écorce", "écorces", "tranche"]),
    "wood": ("stem", "stem", ["wood", "sapwood", "heartwood"], ["bois", "aubier", "duramen"]),
    "latex": ("stem", None, ["latex", "exudate", "sap"], ["latex", "exsudat", "sève"]),
    "lenticel": ("stem", "stem", ["lenticel", "lenticels"], ["lenticelle", "lenticelles"]),
    "spine": ("stem", None, ["spine", "spines", "thorn", "thorns", "prickle", "prickles"], ["épine", "épines", "aiguillon", "aiguillons"]),
    "tendril": ("stem", None, ["tendril", "tendrils"], ["vrille", "vrilles"]),
    "bud": ("bud", None, ["bud", "buds", "leaf bud", "leaf buds", "terminal bud", "terminal buds"], ["bourgeon", "bourgeons"]),
    "leaf": ("leaf", None, ["leaf", "leaves", "foliage", "foliage leaf", "foliage leaves", "leaf-blade"],
             ["feuille", "feuilles", "feuillage"]),
    "frond": ("leaf", None, ["frond", "fronds", "fertile fronds", "sterile fronds"], ["fronde", "frondes"]),
    "leaflet": ("leaf", "leaf", ["leaflet", "leaflets", "foliole", "folioles", "lateral leaflets", "terminal leaflet"],
                ["foliole", "folioles", "foliolule", "foliolules"]),
    "pinna": ("leaf", "leaf", ["pinna", "pinnae", "pinnas"], ["penne", "pennes", "pinnule"]),
    "pinnule": ("leaf", "pinna", ["pinnule", "pinnules", "segments"], ["pinnule", "pinnules"]),
    "leaf blade": ("leaf", "leaf", ["blade", "blades", "lamina", "laminae", "leaf blade", "leaf blades", "leaf lamina"],
                   ["limbe", "limbes", "lame"]),
    "petiole": ("leaf", "leaf", ["petiole", "petioles", "leaf stalk", "leafstalk"], ["pétiole", "pétioles"]),
    "petiolule": ("leaf", "leaflet", ["petiolule", "petiolules"], ["pétiolule", "pétiolules"]),
    "rachis": ("leaf", "leaf", ["rachis", "rachises", "rhachis", "rachides", "rachilla"], ["rachis", "rhachis"]),
    "stipule": ("leaf", "leaf", ["stipule", "stipules", "ochrea", "ocrea"], ["stipule", "stipules", "ochréa"]),
    "stipel": ("leaf", "leaflet", ["stipel", "stipels", "stipellae"], ["stipelle", "stipelles"]),
    "leaf sheath": ("leaf", "leaf", ["sheath", "sheaths", "leaf sheath", "leaf sheaths"], ["gaine", "gaines"]),
    "ligule": ("leaf", "leaf", ["ligule", "ligules"], ["ligule", "ligules"]),
    "midrib": ("leaf", "leaf blade", ["midrib", "midribs", "midvein", "midnerve", "costa", "costae", "main vein", "median vein"],
               ["nervure médiane", "nervures médianes", "côte"]),
    "vein": ("leaf", "leaf blade", ["vein", "veins", "venation", "nerve", "nerves", "nervation", "lateral veins", "lateral vein",
                                    "secondary veins", "secondary vein", "secondary nerves", "lateral nerves", "tertiary veins",
                                    "veinlets", "veinlet", "nervules", "primary vein", "tertiary vein", "cross-veins", "cross veins", "reticulation", "intersecondary veins", "main veins", "primary veins"],
             ["nervure", "nervures", "nervation", "nervures latérales", "nervures secondaires", "nervures tertiaires",
              "nervilles", "réseau de nervures", "réticulation"]),
    "domatium": ("leaf", "leaf blade", ["domatia", "domatium"], ["domatie", "domaties"]),
    "inflorescence": ("inflorescence", None, ["inflorescence", "inflorescences", "panicle", "panicles", "raceme", "racemes",
                                              "cyme", "cymes", "umbel", "umbels", "spike", "spikes", "thyrse", "thyrses",
                                              "corymb", "corymbs", "capitulum", "capitula", "head", "heads", "fascicle", "fascicles",
                                              "glomerule", "glomerules", "catkin", "catkins", "spadix", "spadices",
                                              "male inflorescences", "female inflorescences", "staminate inflorescences",
                                              "pistillate inflorescences", "synflorescence"],
                      ["inflorescence", "inflorescences", "panicule", "panicules", "grappe", "grappes", "cyme", "cymes",
                       "ombelle", "ombelles", "épi", "épis", "thyrse", "thyrses", "corymbe", "corymbes", "capitule", "capitules",
                       "fascicule", "fascicules", "glomérule", "glomérules", "chaton", "chatons", "spadice", "spadices"]),
    "infructescence": ("fruit", None, ["infructescence", "infructescences"], ["infrutescence", "infrutescences", "infructescence"]),
    "peduncle": ("inflorescence", "inflorescence", ["peduncle", "peduncles", "scape", "scapes", "common peduncle"], ["pédoncule", "pédoncules", "hampe"]),
    "bract": ("inflorescence", "inflorescence", ["bract", "bracts", "interfloral bracts", "floral bracts", "involucral bracts",
                                               "phyllaries", "spathe", "spathes", "involucre"],
              ["bractée", "bractées", "spathe", "spathes", "involucre"]),
    "bracteole": ("inflorescence", "inflorescence", ["bracteole", "bracteoles", "bractlet", "bractlets", "prophyll", "prophylls"],
                  ["bractéole", "bractéoles", "préfeuille", "préfeuilles"]),
    "pedicel": ("flower", "flower", ["pedicel", "pedicels", "fruiting pedicel", "fruiting pedicels"], ["pédicelle", "pédicelles"]),
    "flower": ("flower", None, ["flower", "flowers", "male flowers", "female flowers", "staminate flowers", "pistillate flowers",
                                "bisexual flowers", "hermaphrodite flowers", "florets", "floret", "flowering"],
               ["fleur", "fleurs", "fleurs mâles", "fleurs femelles", "fleurs hermaphrodites", "fleuron", "fleurons"]),
    "flower bud": ("flower", "flower", ["flower bud", "flower buds", "floral buds"], ["bouton", "boutons", "bouton floral", "boutons floraux"]),
    "perianth": ("flower", "flower", ["perianth", "perianths", "perigone"], ["périanthe", "périanthes", "périgone"]),
    "calyx": ("flower", "perianth", ["calyx", "calyces", "calyxes", "fruiting calyx"], ["calice", "calices"]),
    "sepal": ("flower", "calyx", ["sepal", "sepals", "dorsal sepal", "lateral sepals"], ["sépale", "sépales"]),
    "corolla": ("flower", "perianth", ["corolla", "corollas", "corollae", "mature corolla"], ["corolle", "corolles"]),
    "petal": ("flower", "corolla", ["petal", "petals", "inner petals", "outer petals"], ["pétale", "pétales"]),
    "tepal": ("flower", "perianth", ["tepal", "tepals"], ["tépale", "tépales"]),
    "labellum": ("flower", "corolla", ["labellum", "lip", "lips"], ["labelle", "labelles", "lèvre", "lèvres"]),
    "hypanthium": ("flower", "flower", ["hypanthium", "hypanthia", "floral tube", "floral cup"], ["hypanthe", "hypanthium", "coupe réceptaculaire"]),
    "receptacle": ("flower", "flower", ["receptacle", "receptacles", "torus"], ["réceptacle", "réceptacles"]),
    "disk": ("flower", "flower", ["disk", "disc", "disks", "discs", "nectary", "nectaries", "nectar disk"], ["disque", "disques", "nectaire", "nectaires"]),
    "corona": ("flower", "flower", ["corona", "coronas", "coronae"], ["couronne", "couronnes"]),
    "androecium": ("flower", "flower", ["androecium", "androecia", "synandrium", "staminal column"],
                   ["androcée", "androcées", "tube staminal", "colonne staminale"]),
    "androphore": ("flower", "androecium", ["androphore", "androphores", "androgynophore"], ["androphore", "androgynophore"]),
    "stamen": ("flower", "androecium", ["stamen", "stamens", "stamina"], ["étamine", "étamines"]),
    "filament": ("flower", "stamen", ["filament", "filaments"], ["filet", "filets"]),
    "anther": ("flower", "stamen", ["anther", "anthers", "thecae", "theca", "anther cells"], ["anthère", "anthères", "thèque", "thèques", "loges de l'anthère"]),
    "connective": ("flower", "anther", ["connective", "connectives"], ["connectif", "connectifs"]),
    "staminode": ("flower", "androecium", ["staminode", "staminodes", "staminodia", "staminodium"], ["staminode", "staminodes"]),
    "pollen": ("flower", "anther", ["pollen", "pollen grains", "pollinia", "pollinium"], ["pollen", "grains de pollen", "pollinies"]),
    "gynoecium": ("flower", "flower", ["gynoecium", "gynoecia", "pistil", "pistils", "carpels", "carpel"],
                  ["gynécée", "gynécées", "pistil", "pistils", "carpelle", "carpelles"]),
    "pistillode": ("flower", "flower", ["pistillode", "pistillodes", "rudimentary ovary"], ["pistillode", "ovaire rudimentaire"]),
    "ovary": ("flower", "gynoecium", ["ovary", "ovaries"], ["ovaire", "ovaires"]),
    "ovule": ("flower", "ovary", ["ovule", "ovules"], ["ovule", "ovules"]),
    "locule": ("flower", "ovary", ["locule", "locules", "cells"], ["loge", "loges"]),
    "placenta": ("flower", "ovary", ["placenta", "placentas", "placentae", "placentation"], ["placenta", "placentas", "placentation"]),
    "style": ("flower", "gynoecium", ["style", "styles", "style head"], ["style", "styles"]),
    "stigma": ("flower", "gynoecium", ["stigma", "stigmas", "stigmata"], ["stigmate", "stigmates"]),
    "gynophore": ("flower", "gynoecium", ["gynophore", "gynophores", "carpophore"], ["gynophore", "carpophore"]),
    "column": ("flower", "flower", ["column", "gynostemium"], ["colonne", "gynostème"]),
    "fruit": ("fruit", None, ["fruit", "fruits", "capsule", "capsules", "berry", "berries", "drupe", "drupes", "pod", "pods",
                              "legume", "legumes", "achene", "achenes", "nut", "nuts", "nutlet", "nutlets", "samara", "samaras",
                              "follicle", "follicles", "schizocarp", "mericarp", "mericarps", "siliqua", "silique", "siliques",
                              "cypsela", "cypselae", "caryopsis", "pome", "syncarp", "fruitlets", "fruiting carpels", "mature fruits"],
              ["fruit", "fruits", "capsule", "capsules", "baie", "baies", "drupe", "drupes", "gousse", "gousses", "akène",
               "akènes", "noix", "nucule", "nucules", "samare", "samares", "follicule", "follicules", "méricarpe", "méricarpes",
               "silique", "siliques", "caryopse", "syncarpe", "cône", "cônes"]),
    "pericarp": ("fruit", "fruit", ["pericarp", "exocarp", "epicarp", "mesocarp", "fruit wall", "valves", "valve"],
                 ["péricarpe", "épicarpe", "exocarpe", "mésocarpe", "valve", "valves", "pulpe"]),
    "endocarp": ("fruit", "fruit", ["endocarp", "pyrene", "pyrenes", "stone", "stones"], ["endocarpe", "noyau", "noyaux", "pyrène", "pyrènes"]),
    "seed": ("seed", None, ["seed", "seeds"], ["graine", "graines", "semence", "semences"]),
    "testa": ("seed", "seed", ["testa", "seed coat", "seed-coat", "tegmen"], ["tégument", "téguments", "testa"]),
    "aril": ("seed", "seed", ["aril", "arils", "arillode", "sarcotesta", "caruncle"], ["arille", "arilles", "arillode", "caroncule"]),
    "embryo": ("seed", "seed", ["embryo", "embryos", "radicle"], ["embryon", "embryons", "radicule"]),
    "cotyledon": ("seed", "embryo", ["cotyledon", "cotyledons"], ["cotylédon", "cotylédons"]),
    "endosperm": ("seed", "seed", ["endosperm", "albumen", "perisperm"], ["albumen", "endosperme", "périsperme"]),
    "hilum": ("seed", "seed", ["hilum", "hila"], ["hile"]),
    "sorus": ("spore", None, ["sorus", "sori", "coenosori"], ["sore", "sores"]),
    "indusium": ("spore", "sorus", ["indusium", "indusia"], ["indusie", "indusies"]),
    "sporangium": ("spore", "sorus", ["sporangium", "sporangia"], ["sporange", "sporanges"]),
    "spore": ("spore", "sporangium", ["spore", "spores"], ["spore", "spores"]),
    "stipe": ("leaf", "frond", ["stipe", "stipes"], ["stipe", "stipes"]),
    "spikelet": ("inflorescence", "inflorescence", ["spikelet", "spikelets"], ["épillet", "épillets"]),
    "glume": ("inflorescence", "spikelet", ["glume", "glumes", "lower glume", "upper glume"], ["glume", "glumes"]),
    "lemma": ("inflorescence", "spikelet", ["lemma", "lemmas", "lemmata"], ["lemme", "lemmes", "glumelle inférieure"]),
    "palea": ("inflorescence", "spikelet", ["palea", "paleas", "palet"], ["paléole", "paléoles", "glumelle supérieure"]),
    "pseudobulb": ("stem", "stem", ["pseudobulb", "pseudobulbs"], ["pseudobulbe", "pseudobulbes"]),
    "chromosome": ("chromosome", None, ["chromosome", "chromosomes"], ["chromosome", "chromosomes"]),
    "seedling": ("plant", None, ["seedling", "seedlings"], ["plantule", "plantules"]),
}

# More parents than the single one above: anatomy is a lattice (a pedicel belongs to its flower
# and to the inflorescence; veins to a leaf blade, a leaflet or a pinna).
EXTRA_PARENTS: dict[str, list[str]] = {
    "stem": ["plant"], "root": ["plant"], "rhizome": ["plant"], "trunk": ["stem"], "branch": ["stem"],
    "bark": ["trunk", "branch", "twig"], "wood": ["trunk", "branch", "twig"], "lenticel": ["twig", "branch", "bark", "trunk"],
    "internode": ["rhizome", "branch", "twig", "inflorescence"], "node": ["rhizome", "branch", "twig", "inflorescence"],
    "spine": ["stem", "branch", "twig"], "bud": ["twig", "branch"], "flower": ["inflorescence"], "pedicel": ["inflorescence"],
    "bracteole": ["pedicel", "flower"], "flower bud": ["inflorescence", "bud"], "midrib": ["vein", "leaflet", "pinna", "frond"],
    "vein": ["leaflet", "pinna", "pinnule", "frond"], "leaf blade": ["frond"], "sorus": ["frond", "pinna", "pinnule"],
    "fruit": ["infructescence"], "seed": ["fruit"], "stamen": ["flower"], "gynoecium": ["flower"], "style": ["ovary"],
    "stigma": ["style"], "domatium": ["leaflet"], "petiolule": ["leaf"], "leaflet": ["frond"],
    # a fern blade is divided into pinnae along its rachis (FNA: "blade ... rachis, pinnae")
    "pinna": ["leaf blade", "frond"], "pinnule": ["leaf blade"], "rachis": ["frond", "leaf blade"],
    # sterile forms are kinds of the organ (FNA glossary: staminode "a sterile stamen"; PO: pistillode is_a gynoecium)
    "staminode": ["stamen"], "pistillode": ["gynoecium"],
}
# An infructescence is the inflorescence in fruit: the parts of one are parts of the other.
FRUITING = {"inflorescence": "infructescence"}
# Adjectives that name an organ: with a relative part they name the organ's part ("staminal tube" is the tube of the
# stamens, "calycine lobes" the calyx lobes).
ORGAN_ADJECTIVES: dict[str, str] = {"staminal": "stamen", "calycine": "calyx", "corolline": "corolla", "sepaline": "sepal",
                                    "petaline": "petal", "foliar": "leaf", "carpellary": "gynoecium", "ovarian": "ovary",
                                    "floral": "flower", "stylar": "style", "receptacular": "receptacle"}

# Parts named relative to the organ being described: "lobes" in a corolla clause are corolla lobes.
RELATIVE_PARTS: dict[str, tuple[list[str], list[str]]] = {
    "lobe": (["lobe", "lobes", "lobules", "lobule", "segments", "teeth", "tooth", "divisions"], ["lobe", "lobes", "lobule", "lobules", "dent", "dents", "division", "divisions", "segment", "segments"]),
    "tube": (["tube", "tubes"], ["tube", "tubes"]),
    "throat": (["throat", "throats", "mouth", "mouths", "orifice"], ["gorge", "orifice"]),
    "lid": (["lid", "lids", "operculum", "opercula"], ["opercule", "couvercle"]),
    "spur": (["spur", "spurs"], ["éperon", "éperons"]),
    "claw": (["claw", "claws"], ["onglet", "onglets"]),
    "hair": (["hair", "hairs", "trichomes", "trichome", "indumentum", "indument", "pubescence", "vestiture", "tomentum", "bristles", "setae", "cilia"],
             ["poil", "poils", "indument", "pubescence", "tomentum", "soies", "cils"]),
    "scale": (["scale", "scales", "paleae"], ["écaille", "écailles"]),
    "gland": (["gland", "glands", "dots", "glandular dots", "pellucid dots", "punctations"], ["glande", "glandes", "points", "ponctuations", "points translucides"]),
    "wing": (["wing", "wings"], ["aile", "ailes"]),
    "stalk": (["stalk", "stalks", "stalklet"], ["pédicule", "stipe"]),
}
# Positions on an organ: they qualify the character ("margin serrate" is the blade's margin).
POSITIONS: dict[str, tuple[list[str], list[str]]] = {
    "apex": (["apex", "apices", "tip", "tips", "acumen", "top", "summit"], ["sommet", "sommets", "apex", "acumen", "pointe", "extrémité"]),
    "base": (["base", "bases"], ["base", "bases"]),
    "margin": (["margin", "margins", "edge", "edges"], ["marge", "marges", "bord", "bords"]),
    "upper surface": (["upper surface", "upper surfaces", "adaxial surface", "upper side", "upperside", "above", "ventral surface"],
                      ["face supérieure", "faces supérieures", "dessus", "face ventrale"]),
    "lower surface": (["lower surface", "lower surfaces", "abaxial surface", "lower side", "underside", "beneath", "below", "dorsal surface"],
                      ["face inférieure", "faces inférieures", "dessous", "face dorsale"]),
    "surface": (["surface", "surfaces", "both surfaces", "outside", "inside", "outer surface", "inner surface"],
                ["face", "faces", "surface", "surfaces", "deux faces", "extérieur", "intérieur"]),
}
# Organ nouns that also say what kind of fruit or inflorescence it is.
TYPE_NOUNS: dict[str, dict[str, list[str]]] = {
    "fruit": {"capsule": ["capsule", "capsules", "capsular"], "berry": ["berry", "berries", "baie", "baies"],
              "drupe": ["drupe", "drupes", "drupaceous"], "legume": ["legume", "legumes", "pod", "pods", "gousse", "gousses"],
              "achene": ["achene", "achenes", "akène", "akènes", "cypsela", "cypselae"], "nut": ["nut", "nuts", "noix"],
              "nutlet": ["nutlet", "nutlets", "nucule", "nucules"], "samara": ["samara", "samaras", "samare", "samares"],
              "follicle": ["follicle", "follicles", "follicule", "follicules"], "schizocarp": ["schizocarp", "mericarp", "mericarps", "méricarpe", "méricarpes"],
              "silique": ["siliqua", "silique", "siliques"], "caryopsis": ["caryopsis", "caryopse"], "syncarp": ["syncarp", "syncarpe"],
              "cone": ["cône", "cônes"]},
    "inflorescence": {"panicle": ["panicle", "panicles", "panicule", "panicules", "paniculate"], "raceme": ["raceme", "racemes", "grappe", "grappes", "racemose"],
                      "cyme": ["cyme", "cymes", "cymose"], "umbel": ["umbel", "umbels", "ombelle", "ombelles", "umbellate"],
                      "spike": ["spike", "spikes", "épi", "épis", "spicate"], "thyrse": ["thyrse", "thyrses"], "corymb": ["corymb", "corymbs", "corymbe", "corymbes"],
                      "head": ["capitulum", "capitula", "head", "heads", "capitule", "capitules"], "fascicle": ["fascicle", "fascicles", "fascicule", "fascicules"],
                      "glomerule": ["glomerule", "glomerules", "glomérule", "glomérules"], "catkin": ["catkin", "catkins", "chaton", "chatons"],
                      "spadix": ["spadix", "spadices", "spadice", "spadices"]},
}

# --------------------------------------------------------------------------- states
# FNA category -> the character Herbaria reports.
FNA_CHARACTER = {
    "shape": "shape", "architecture": "architecture", "external texture": "surface", "coloration": "colour",
    "arrangement": "arrangement", "position": "position", "orientation": "orientation", "habit": "habit",
    "reproduction": "sexuality", "relief": "surface", "internal texture": "texture", "prominence": "prominence",
    "size": "size", "reflectance": "surface", "dehiscence": "dehiscence", "pattern": "pattern", "fusion": "fusion",
    "count": "count", "condition": "condition", "venation": "venation", "odor": "odour", "course": "course",
    "location": "position", "fragility": "texture", "maturation": "maturation", "development": "development",
    "vernation": "vernation", "duration": "duration", "life_style": "habit", "behaviour": "orientation",
    "fixation": "position", "taste": "taste", "nutrition": "habit", "exudation": "exudation", "density": "density",
}
# FNA category precedence when a term has several
FNA_ORDER = ["shape", "arrangement", "internal texture", "external texture", "coloration", "architecture", "habit",
             "orientation", "position", "duration", "dehiscence", "fusion", "reproduction", "venation", "relief",
             "reflectance", "prominence", "pattern", "odor", "size", "count", "condition", "course", "location",
             "fragility", "maturation", "development", "vernation", "life_style", "behaviour", "fixation", "taste",
             "nutrition", "exudation", "density"]
FLORATRAITER_CHARACTER = {
    "margin_terms.csv": "margin", "surface_terms.csv": "surface", "venation_terms.csv": "venation",
    "shape_terms.csv": "shape", "habit_terms.csv": "habit", "plant_duration_terms.csv": "duration",
    "leaf_duration_terms.csv": "duration", "duration_terms.csv": "duration", "reproduction_terms.csv": "sexuality",
    "odor_terms.csv": "odour", "woodiness_terms.csv": "woodiness", "leaf_folding_terms.csv": "vernation",
    "flower_location_terms.csv": "position",
}
HAIR = re.compile(r"(pube|puber|tomen|villo|villous|hirs|pilos|seric|strig|hispid|lanat|lanug|glabr|velut|flocc|hair|"
                  r"ciliat|ciliol|barbat|setos|setul|arachn|canesc|comose|woolly|downy|indument|stellate-|scabrid|silky)")
# Words FNA lists that are too common or too vague to be states in running text.
STOP = {"long", "short", "large", "small", "few", "many", "several", "one", "two", "three", "side", "other", "above", "below",
        "distal", "proximal", "present", "absent", "about", "more", "less", "very", "much", "well", "often", "usually",
        "sometimes", "rarely", "also", "not", "to", "or", "and", "in", "at", "on", "of", "by", "with", "without", "as",
        "each", "all", "both", "part", "parts", "form", "forms", "type", "times", "first", "second", "last", "number",
        "together", "near", "far", "high", "low", "wide", "broad", "narrow", "thick", "thin", "deep", "length", "width",
        "ca", "c", "dry", "fresh", "living", "young", "old", "mature", "new", "open", "closed", "single", "double",
        "same", "different", "similar", "equal", "unequal", "various", "variable", "apex", "base", "margin", "tip",
        "upper", "lower", "inner", "outer", "middle", "central", "main", "primary", "secondary", "tertiary", "ultimate",
        "lateral", "terminal", "basal", "apical", "median", "marginal", "male", "female", "fertile", "sterile", "simple",
        "entire", "free", "ovate", "round", "up", "out", "off", "down", "over", "under", "through", "between",
        "body", "plant", "plants", "leaf", "cell", "cells", "unit", "units", "level", "mm", "cm", "m", "dm"}
# re-admit the botanical senses of some stopwords (they are states in flora prose)
READMIT = {"lateral", "terminal", "basal", "apical", "median", "marginal", "simple", "entire", "free", "ovate",
           "male", "female", "fertile", "sterile", "thick", "thin", "narrow", "broad", "present", "absent"}

COLOURS = ["white", "whitish", "cream", "yellow", "yellowish", "orange", "red", "reddish", "pink", "pinkish", "purple", "violet",
           "purplish", "blue", "bluish", "green", "greenish", "brown", "brownish", "black", "blackish", "grey", "greyish", "gray",
           "grayish", "rufous", "fulvous", "golden", "silvery", "olive", "ferruginous", "crimson", "scarlet", "maroon", "lilac",
           "mauve", "ochre", "straw-coloured", "tawny", "castaneous", "stramineous", "vinaceous", "glaucous-green"]

# Plain-English glossary equivalents (the wording a botanist or a student uses for a term).
EN_SYNONYMS: dict[str, list[str]] = {
    "glabrous": ["hairless", "without hairs", "smooth-surfaced"], "hairy": ["with hairs"], "pubescent": ["hairy", "downy", "finely hairy"],
    "puberulent": ["minutely hairy", "puberulous"], "tomentose": ["woolly-felted", "felted", "densely woolly"],
    "villous": ["shaggy-hairy", "long-hairy", "villose"], "hirsute": ["coarsely hairy", "rough-hairy"], "pilose": ["soft-hairy", "with long soft hairs"],
    "sericeous": ["silky", "silky-hairy"], "strigose": ["with appressed bristles", "appressed-hairy"], "hispid": ["bristly", "stiff-hairy"],
    "lanate": ["woolly"], "velutinous": ["velvety"], "glabrescent": ["becoming hairless", "nearly glabrous"], "scabrous": ["rough", "sandpapery"],
    "ciliate": ["fringed with hairs", "with marginal hairs"], "glandular": ["gland-dotted", "with glands"], "stellate": ["star-shaped"],
    "serrate": ["saw-toothed", "serrated", "toothed like a saw"], "serrulate": ["finely saw-toothed", "minutely serrate"],
    "dentate": ["toothed", "with outward-pointing teeth"], "denticulate": ["finely toothed", "minutely toothed"],
    "crenate": ["scalloped", "round-toothed"], "crenulate": ["finely scalloped", "minutely crenate"], "entire": ["smooth-edged", "untoothed", "without teeth"],
    "undulate": ["wavy", "wavy-edged"], "sinuate": ["strongly wavy"], "lobed": ["divided into lobes"], "revolute": ["rolled under", "rolled back"],
    "doubly serrate": ["double-toothed"],
    "ovate": ["egg-shaped"], "obovate": ["inversely egg-shaped", "reverse egg-shaped"], "lanceolate": ["lance-shaped", "spear-shaped"],
    "oblanceolate": ["inversely lance-shaped"], "elliptic": ["elliptical", "oval"], "oblong": ["rectangular with rounded ends"],
    "cordate": ["heart-shaped"], "obcordate": ["inversely heart-shaped"], "reniform": ["kidney-shaped"], "sagittate": ["arrowhead-shaped", "arrow-shaped"],
    "hastate": ["halberd-shaped"], "linear": ["strap-shaped", "narrow and parallel-sided"], "orbicular": ["circular", "round"],
    "deltate": ["triangular", "deltoid"], "spathulate": ["spoon-shaped", "spatulate"], "peltate": ["shield-shaped", "umbrella-like"],
    "falcate": ["sickle-shaped"], "cuneate": ["wedge-shaped"], "acuminate": ["long-pointed", "tapering to a long point"],
    "acute": ["pointed", "sharp-pointed"], "obtuse": ["blunt"], "rounded": ["round-tipped"], "truncate": ["squared-off", "abruptly cut off"],
    "emarginate": ["notched at the tip", "notched"], "mucronate": ["with a short sharp point"], "cuspidate": ["with a stiff point"],
    "caudate": ["tailed", "tail-like"], "attenuate": ["gradually tapering", "tapering"], "auriculate": ["eared", "with ear-like lobes"],
    "globose": ["spherical", "globular", "ball-shaped"], "ovoid": ["egg-shaped (3D)"], "obovoid": ["inversely egg-shaped (3D)"],
    "ellipsoid": ["ellipsoidal"], "fusiform": ["spindle-shaped"], "cylindric": ["cylindrical", "tubular in shape"], "clavate": ["club-shaped"],
    "campanulate": ["bell-shaped"], "infundibuliform": ["funnel-shaped", "funnelform"], "funnelform": ["funnel-shaped"], "rotate": ["wheel-shaped", "flat and circular"],
    "urceolate": ["urn-shaped"], "tubular": ["tube-shaped"], "salverform": ["trumpet-shaped", "hypocrateriform"], "conical": ["cone-shaped", "conic"],
    "turbinate": ["top-shaped"], "pyriform": ["pear-shaped"], "subglobose": ["almost spherical", "nearly globose"],
    "coriaceous": ["leathery", "leather-like"], "chartaceous": ["papery", "paper-like"], "membranous": ["thin and membrane-like", "membranaceous"],
    "fleshy": ["succulent", "carnose"], "succulent": ["fleshy"], "woody": ["lignified", "ligneous"], "herbaceous": ["non-woody", "soft-stemmed"],
    "sessile": ["stalkless", "without a stalk"], "subsessile": ["almost stalkless", "nearly sessile"], "petiolate": ["stalked", "with a petiole"], "pedicellate": ["stalked"],
    "opposite": ["in opposite pairs", "paired at the nodes"], "alternate": ["alternately arranged", "one per node"], "whorled": ["verticillate", "in whorls"],
    "distichous": ["two-ranked", "in two rows"], "spiral": ["spirally arranged"], "fasciculate": ["clustered", "in bundles"], "decussate": ["in alternating pairs"],
    "imbricate": ["overlapping"], "valvate": ["edge to edge"],
    "deciduous": ["shed seasonally", "falling"], "caducous": ["falling early", "early deciduous"], "persistent": ["remaining attached", "not falling"],
    "evergreen": ["persistent-leaved"], "annual": ["living one year"], "perennial": ["long-lived"],
    "axillary": ["in the leaf axils", "borne in the axils"], "terminal": ["at the tips", "apical"], "cauliflorous": ["flowering on the trunk"],
    "ramiflorous": ["flowering on the branches"], "epiphytic": ["growing on other plants"], "scandent": ["climbing"], "twining": ["winding", "voluble"],
    "climbing": ["scandent"], "erect": ["upright"], "pendulous": ["hanging", "drooping"], "pendent": ["hanging down"], "decumbent": ["lying down with rising tips"],
    "prostrate": ["lying flat"], "creeping": ["running along the ground"], "reflexed": ["bent backwards", "bent back"], "recurved": ["curved backwards"],
    "spreading": ["diverging", "patent"], "ascending": ["curving upwards"],
    "actinomorphic": ["radially symmetric", "regular"], "zygomorphic": ["bilaterally symmetric", "irregular"],
    "unisexual": ["single-sexed"], "bisexual": ["hermaphrodite", "perfect"], "monoecious": ["with separate male and female flowers on one plant"],
    "dioecious": ["with male and female flowers on different plants"],
    "dehiscent": ["splitting open", "opening at maturity"], "indehiscent": ["not splitting open", "remaining closed"],
    "loculicidal": ["splitting through the locules"], "septicidal": ["splitting along the septa"],
    "connate": ["fused", "united"], "adnate": ["fused to another organ"], "free": ["separate", "not fused"], "winged": ["with wings", "alate"],
    "keeled": ["ridged like a keel", "carinate"], "compound": ["divided into leaflets"], "simple": ["undivided"],
    "pinnate": ["feather-like", "pinnately compound"], "bipinnate": ["twice pinnate"], "trifoliolate": ["with three leaflets", "three-foliolate"],
    "palmate": ["hand-shaped", "palmately compound"], "imparipinnate": ["odd-pinnate"], "paripinnate": ["even-pinnate"],
    "unarmed": ["without spines", "spineless"], "spiny": ["thorny", "prickly"], "aculeate": ["prickly"],
    "shiny": ["glossy", "lustrous"], "glossy": ["shiny"], "dull": ["matte", "not shiny"], "glaucous": ["bluish-waxy", "with a bloom"],
    "rugose": ["wrinkled"], "verrucose": ["warty"], "papillose": ["with papillae", "finely bumpy"], "striate": ["finely lined", "striped"],
    "punctate": ["dotted", "gland-dotted"], "pellucid": ["translucent"], "lenticellate": ["with lenticels"], "smooth": ["even-surfaced"],
    "fragrant": ["scented", "sweet-smelling"], "aromatic": ["scented"],
    "white": ["snow-white"], "whitish": ["off-white", "pale white"], "cream": ["creamy", "cream-coloured"], "yellow": ["yellowish"],
    "red": ["reddish"], "purple": ["purplish"], "pink": ["pinkish", "rose"], "green": ["greenish"], "brown": ["brownish"],
    "orange": ["orange-coloured"], "blue": ["bluish"], "black": ["blackish"], "violet": ["violaceous"], "grey": ["gray", "greyish"],
    "ferruginous": ["rusty", "rust-coloured"], "rufous": ["reddish-brown"], "fulvous": ["tawny"], "golden": ["gold-coloured"],
    "parallel": ["parallel-veined"], "reticulate": ["net-veined", "netted"], "pinnately veined": ["feather-veined"],
    "prominent": ["raised", "conspicuous"], "impressed": ["sunken", "depressed"], "inconspicuous": ["hardly visible", "obscure"],
    "inferior": ["below the perianth"], "superior": ["above the perianth"],
}
# Opposites not in PATO (PATO gives glabrous/hairy and a few more).
EN_ANTONYMS: list[tuple[str, str]] = [
    ("glabrous", "hairy"), ("entire", "toothed"), ("sessile", "petiolate"), ("sessile", "pedicellate"), ("sessile", "stalked"),
    ("opposite", "alternate"), ("opposite", "whorled"), ("alternate", "whorled"), ("simple", "compound"),
    ("deciduous", "persistent"), ("deciduous", "evergreen"), ("caducous", "persistent"), ("dehiscent", "indehiscent"),
    ("erect", "pendulous"), ("erect", "pendent"), ("erect", "prostrate"), ("actinomorphic", "zygomorphic"), ("free", "connate"),
    ("unisexual", "bisexual"), ("monoecious", "dioecious"), ("present", "absent"), ("unarmed", "spiny"), ("shiny", "dull"),
    ("superior", "inferior"), ("annual", "perennial"), ("woody", "herbaceous"), ("inconspicuous", "prominent"),
    ("glabrous", "pubescent"), ("stipulate", "exstipulate"),
]
# States that say an organ is there or not: "unarmed" answers "prickles present?".
IMPLIES: dict[str, tuple[str, str]] = {
    "unarmed": ("spine", "absent"), "spiny": ("spine", "present"), "prickly": ("spine", "present"),
    "aculeate": ("spine", "present"), "armed": ("spine", "present"), "thorny": ("spine", "present"),
    "spinose": ("spine", "present"), "exstipulate": ("stipule", "absent"), "stipulate": ("stipule", "present"),
    "eglandular": ("gland", "absent"), "glandular": ("gland", "present"), "winged": ("wing", "present"),
    "unwinged": ("wing", "absent"), "wingless": ("wing", "absent"), "bracteate": ("bract", "present"),
    "ebracteate": ("bract", "absent"), "apetalous": ("petal", "absent"), "leafless": ("leaf", "absent"),
    "aphyllous": ("leaf", "absent"), "petiolate": ("petiole", "present"), "epetiolate": ("petiole", "absent"),
    "awned": ("awn", "present"), "awnless": ("awn", "absent"), "arillate": ("aril", "present"), "exarillate": ("aril", "absent"),
    "lenticellate": ("lenticel", "present"), "latex": ("latex", "present"),
}

# Broader terms a query may use for a family of states (a query's "hairy" matches "tomentose").
BROADER: dict[str, list[str]] = {
    "hairy": ["pubescent", "puberulent", "puberulous", "tomentose", "tomentellous", "tomentulose", "villous", "villose", "hirsute",
              "hirsutulous", "pilose", "pilosulous", "sericeous", "strigose", "strigillose", "hispid", "hispidulous", "lanate",
              "velutinous", "floccose", "setose", "setulose", "barbate", "arachnoid", "canescent", "ciliate", "ciliolate",
              "woolly", "downy", "silky", "stellate-pubescent", "scabrid", "furfuraceous", "lepidote", "indumentum"],
    "glabrous": ["glabrescent", "glabrate", "subglabrous", "hairless"],
    "toothed": ["serrate", "serrulate", "dentate", "denticulate", "crenate", "crenulate", "doubly serrate", "biserrate", "dentated",
                "serrated", "toothed"],
    "lobed": ["lobate", "lobulate", "pinnatifid", "pinnatilobed", "pinnatisect", "palmatifid", "palmatilobed", "trilobed", "bilobed",
              "3-lobed", "2-lobed", "5-lobed"],
    "compound": ["pinnate", "bipinnate", "tripinnate", "imparipinnate", "paripinnate", "trifoliolate", "unifoliolate", "palmate",
                 "digitate", "palmately compound", "pinnately compound", "ternate", "biternate", "bifoliolate"],
    "stalked": ["petiolate", "pedicellate", "stipitate", "pedunculate", "petiolulate"],
    # colour families: a query's "blue" is met by "bluish", "white" by "whitish" (not the other way round)
    "white": ["whitish", "off-white", "snow-white", "creamy white", "cream"], "blue": ["bluish", "sky-blue", "pale blue"],
    "red": ["reddish", "crimson", "scarlet", "orange-red", "blood-red"], "purple": ["purplish", "mauve", "lilac", "violet"],
    "black": ["blackish", "purplish-black"], "green": ["greenish", "yellowish green", "olive"], "yellow": ["yellowish", "golden"],
    "brown": ["brownish", "tan", "rufous", "fulvous", "ferruginous", "castaneous"], "pink": ["pinkish", "rose"],
    "grey": ["greyish", "grayish", "gray", "silvery", "canescent"],
}

# French equivalents: English canonical -> French lemmas (masculine singular; inflections are generated).
FR_STATES: dict[str, list[str]] = {
    "opposite": ["opposé"], "subopposite": ["subopposé", "sub-opposé"], "alternate": ["alterne"], "whorled": ["verticillé"],
    "distichous": ["distique"], "fasciculate": ["fasciculé"], "clustered": ["groupé", "agglomérée"], "solitary": ["solitaire", "isolé"],
    "spiral": ["spiralé", "hélicoïdal"], "decussate": ["décussé"], "imbricate": ["imbriqué"], "valvate": ["valvaire"],
    "entire": ["entier"], "dentate": ["denté"], "denticulate": ["denticulé"], "serrate": ["dentelé", "serreté"], "serrulate": ["serrulé", "denticulé-serrulé"],
    "crenate": ["crénelé", "crénel"], "crenulate": ["crénulé"], "undulate": ["ondulé"], "sinuate": ["sinué"], "lobed": ["lobé"],
    "ciliate": ["cilié"], "revolute": ["révoluté", "enroulé"], "toothed": ["denté"],
    "elliptic": ["elliptique"], "ovate": ["ovale", "ové"], "obovate": ["obovale", "obové"], "oblong": ["oblong"], "lanceolate": ["lancéolé"],
    "oblanceolate": ["oblancéolé"], "linear": ["linéaire"], "orbicular": ["orbiculaire", "circulaire"], "rounded": ["arrondi"],
    "cordate": ["cordé", "cordiforme"], "reniform": ["réniforme"], "deltate": ["deltoïde", "deltoïdal"], "triangular": ["triangulaire"],
    "spathulate": ["spatulé"], "cuneate": ["cunéiforme", "cunéé"], "acuminate": ["acuminé"], "acute": ["aigu"], "obtuse": ["obtus"],
    "truncate": ["tronqué"], "emarginate": ["émarginé", "échancré"], "mucronate": ["mucroné"], "attenuate": ["atténué"],
    "cuspidate": ["cuspidé"], "caudate": ["caudé"], "auriculate": ["auriculé"], "peltate": ["pelté"], "falcate": ["falciforme", "falqué"],
    "asymmetric": ["asymétrique", "dissymétrique", "inéquilatéral"], "globose": ["globuleux", "sphérique", "subsphérique"],
    "subglobose": ["subglobuleux"], "ovoid": ["ovoïde"], "obovoid": ["obovoïde"], "ellipsoid": ["ellipsoïde", "ellipsoïdal"],
    "fusiform": ["fusiforme"], "cylindric": ["cylindrique"], "conical": ["conique"], "campanulate": ["campanulé"], "tubular": ["tubuleux", "tubulaire"],
    "funnelform": ["infundibuliforme"], "rotate": ["rotacé"], "urceolate": ["urcéolé"], "clavate": ["claviforme", "clavé"],
    "compressed": ["comprimé"], "flattened": ["aplati"], "angular": ["anguleux"], "winged": ["ailé"], "keeled": ["caréné"],
    "ribbed": ["côtelé"], "quadrangular": ["quadrangulaire", "tétragone"], "terete": ["cylindrique"],
    "glabrous": ["glabre"], "pubescent": ["pubescent"], "puberulent": ["pubérulent", "puberulent"], "tomentose": ["tomenteux"],
    "tomentellous": ["tomentelleux"], "hairy": ["velu", "poilu", "pileux"], "villous": ["villeux"], "velutinous": ["velouté", "veloutineux"],
    "hirsute": ["hirsute", "hérissé"], "sericeous": ["soyeux"], "hispid": ["hispide"], "strigose": ["strigueux", "apprimé-pubescent"],
    "lanate": ["laineux"], "glabrescent": ["glabrescent"], "scabrous": ["scabre", "rude"], "pilose": ["pileux"], "glandular": ["glanduleux"],
    "stellate": ["étoilé"], "floccose": ["floconneux"], "ferruginous": ["ferrugineux"],
    "coriaceous": ["coriace"], "subcoriaceous": ["subcoriace", "sub-coriace"], "chartaceous": ["papyracé", "parcheminé"],
    "membranous": ["membraneux"], "fleshy": ["charnu"], "succulent": ["succulent"], "woody": ["ligneux"], "herbaceous": ["herbacé"],
    "thick": ["épais"], "thin": ["mince", "fin"], "rigid": ["rigide", "raide"], "spongy": ["spongieux"], "fibrous": ["fibreux"],
    "smooth": ["lisse"], "shiny": ["luisant", "brillant", "lustré"], "dull": ["mat", "terne"], "rugose": ["ridé", "rugueux"],
    "verrucose": ["verruqueux"], "punctate": ["ponctué"], "striate": ["strié"], "papillose": ["papilleux"], "lenticellate": ["lenticellé"],
    "glaucous": ["glauque"], "fissured": ["fissuré", "crevassé"], "scaly": ["écailleux"], "pellucid": ["translucide"],
    "white": ["blanc"], "whitish": ["blanchâtre"], "cream": ["crème"], "yellow": ["jaune"], "yellowish": ["jaunâtre"], "orange": ["orange", "orangé"],
    "red": ["rouge"], "reddish": ["rougeâtre"], "pink": ["rose"], "pinkish": ["rosé", "rosâtre"], "purple": ["pourpre", "pourpré"],
    "violet": ["violet"], "purplish": ["violacé", "pourpré"], "blue": ["bleu"], "bluish": ["bleuâtre"], "green": ["vert"],
    "greenish": ["verdâtre"], "brown": ["brun", "marron"], "brownish": ["brunâtre"], "black": ["noir"], "blackish": ["noirâtre"],
    "grey": ["gris"], "greyish": ["grisâtre"], "rufous": ["roux"], "fulvous": ["fauve"], "golden": ["doré"], "silvery": ["argenté"],
    "olive": ["olivâtre"], "discolorous": ["discolore"], "concolorous": ["concolore"],
    "axillary": ["axillaire"], "terminal": ["terminal"], "lateral": ["latéral"], "basal": ["basal"], "apical": ["apical"],
    "cauline": ["caulinaire"], "ramiflorous": ["ramiflore"], "cauliflorous": ["cauliflore"], "epiphyllous": ["épiphylle"],
    "extra-axillary": ["extra-axillaire", "supra-axillaire"], "opposite-leaved": [],
    "sessile": ["sessile"], "subsessile": ["subsessile"], "petiolate": ["pétiolé"], "pedicellate": ["pédicellé"], "stipulate": ["stipulé"],
    "exstipulate": ["exstipulé", "sans stipules"],
    "compound": ["composé"], "simple": ["simple"], "pinnate": ["penné"], "imparipinnate": ["imparipenné"], "paripinnate": ["paripenné"],
    "bipinnate": ["bipenné"], "palmate": ["palmé"], "digitate": ["digité"], "trifoliolate": ["trifoliolé", "trifolié"], "unifoliolate": ["unifoliolé"],
    "branched": ["ramifié"], "unbranched": ["non ramifié", "simple"],
    "erect": ["dressé"], "spreading": ["étalé"], "pendent": ["pendant"], "pendulous": ["retombant"], "ascending": ["ascendant"],
    "creeping": ["rampant"], "climbing": ["grimpant", "sarmenteux"], "twining": ["volubile"], "scandent": ["sarmenteux", "lianescent"],
    "decumbent": ["décombant"], "reflexed": ["réfléchi", "rabattu"], "recurved": ["recourbé"], "prostrate": ["couché", "prostré"],
    "caducous": ["caduc", "précocement caduc"], "deciduous": ["décidu", "caduc"], "persistent": ["persistant"], "evergreen": ["sempervirent"],
    "perennial": ["vivace", "pérenne"], "annual": ["annuel"], "biennial": ["bisannuel"],
    "actinomorphic": ["actinomorphe", "régulier"], "zygomorphic": ["zygomorphe", "irrégulier"],
    "bisexual": ["hermaphrodite", "bisexué"], "unisexual": ["unisexué"], "monoecious": ["monoïque"], "dioecious": ["dioïque"],
    "polygamous": ["polygame"],
    "dehiscent": ["déhiscent"], "indehiscent": ["indéhiscent"], "loculicidal": ["loculicide"], "septicidal": ["septicide"],
    "free": ["libre"], "connate": ["soudé", "conné", "concrescent"], "adnate": ["adné"], "united": ["uni", "réuni"],
    "present": ["présent"], "absent": ["absent", "nul"], "aromatic": ["aromatique"], "fragrant": ["odorant", "parfumé"],
    "spiny": ["épineux"], "unarmed": ["inerme"], "aculeate": ["aculéolé", "aiguillonné"],
    "prominent": ["saillant", "proéminent", "en relief"], "impressed": ["déprimé", "enfoncé", "imprimé"], "inconspicuous": ["peu visible", "indistinct", "inconspicu"],
    "visible": ["visible", "apparent"], "reticulate": ["réticulé"], "parallel": ["parallèle"], "pinnately veined": ["penninervé"],
    "inferior": ["infère"], "superior": ["supère"], "half-inferior": ["semi-infère"], "exserted": ["exsert", "saillant"], "included": ["inclus"],
    "fertile": ["fertile"], "sterile": ["stérile"], "male": ["mâle"], "female": ["femelle"],
    "tree": ["arbre"], "treelet": ["arbuste", "petit arbre"], "shrub": ["arbrisseau", "buisson"], "subshrub": ["sous-arbrisseau", "sous-arbuste"],
    "liana": ["liane"], "herb": ["herbe", "plante herbacée"], "epiphyte": ["épiphyte"], "climber": ["plante grimpante"],
    "parasitic": ["parasite"], "epiphytic": ["épiphyte"], "aquatic": ["aquatique"], "terrestrial": ["terrestre"],
}
FR_IRREGULAR: dict[str, list[str]] = {
    "blanc": ["blanc", "blanche", "blancs", "blanches"], "roux": ["roux", "rousse", "rousses"], "épais": ["épais", "épaisse", "épaisses"],
    "gris": ["gris", "grise", "grises"], "violet": ["violet", "violette", "violets", "violettes"], "caduc": ["caduc", "caduque", "caducs", "caduques"],
    "frais": ["frais", "fraîche", "fraîches"], "mat": ["mat", "mate", "mats", "mates"], "long": ["long", "longue", "longs", "longues"],
    "aigu": ["aigu", "aiguë", "aigüe", "aigus", "aiguës", "aigües"], "fin": ["fin", "fine", "fins", "fines"],
    "annuel": ["annuel", "annuelle", "annuels", "annuelles"], "bisannuel": ["bisannuel", "bisannuelle", "bisannuels", "bisannuelles"],
    "marron": ["marron"], "orange": ["orange", "oranges"], "crème": ["crème"], "inclus": ["inclus", "incluse", "incluses"],
    "exsert": ["exsert", "exserte", "exserts", "exsertes"], "mâle": ["mâle", "mâles"], "femelle": ["femelle", "femelles"],
    "uni": ["uni", "unie", "unis", "unies"], "réuni": ["réuni", "réunie", "réunis", "réunies"], "nul": ["nul", "nulle", "nuls", "nulles"],
    "bas": ["bas", "basse", "basses"], "inerme": ["inerme", "inermes"], "obtus": ["obtus", "obtuse", "obtuses"],
    "pubérulent": ["pubérulent", "pubérulente", "pubérulents", "pubérulentes"], "vert": ["vert", "verte", "verts", "vertes"],
}
FR_MODIFIERS = {"souvent": "often", "parfois": "sometimes", "rarement": "rarely", "généralement": "usually", "en général": "usually",
                "habituellement": "usually", "quelquefois": "sometimes", "toujours": "always", "le plus souvent": "usually",
                "presque toujours": "usually", "exceptionnellement": "rarely", "occasionnellement": "occasionally",
                "fréquemment": "often", "ordinairement": "usually", "normalement": "usually", "typiquement": "usually"}
EN_MODIFIERS = {"usually": "usually", "often": "often", "sometimes": "sometimes", "rarely": "rarely", "occasionally": "occasionally",
                "mostly": "usually", "generally": "usually", "frequently": "often", "seldom": "rarely", "commonly": "often",
                "typically": "usually", "always": "always", "mainly": "usually", "predominantly": "usually", "normally": "usually",
                "exceptionally": "rarely", "infrequently": "rarely", "very rarely": "rarely", "not infrequently": "often",
                "almost always": "usually", "nearly always": "usually"}
EN_DEGREE = ["densely", "sparsely", "minutely", "finely", "coarsely", "shortly", "slightly", "very", "strongly", "weakly", "broadly",
             "narrowly", "deeply", "shallowly", "more or less", "±", "rather", "somewhat", "quite", "distinctly", "obscurely",
             "faintly", "conspicuously", "inconspicuously", "long", "short", "thinly", "thickly", "sharply", "bluntly", "irregularly",
             "regularly", "widely", "closely", "loosely", "tightly", "evenly", "unevenly", "softly", "stiffly", "pale", "dark",
             "light", "bright", "dull", "deep", "subsequently", "early", "soon", "later", "eventually", "ultimately", "initially",
             "when young", "when dry", "in sicco", "at maturity", "at least", "almost", "nearly", "partly", "completely", "entirely",
             "wholly", "mainly", "gradually", "abruptly", "conspicuously", "markedly", "hardly", "scarcely", "barely", "extremely",
             "exceedingly", "moderately", "fairly", "much", "strikingly", "persistently", "closely", "minutely"]
FR_DEGREE = ["densément", "éparsément", "finement", "grossièrement", "brièvement", "légèrement", "très", "fortement", "faiblement",
             "largement", "étroitement", "profondément", "peu", "±", "plus ou moins", "assez", "un peu", "nettement", "courtement",
             "longuement", "pâle", "foncé", "clair", "vif", "presque", "à peine", "tout à fait", "entièrement", "à l'état sec",
             "sur le sec", "à l'état frais", "à maturité", "à la fin", "progressivement", "brusquement", "bien", "tardivement",
             "précocement", "très finement", "éparsement", "densement"]
EN_NEGATIONS = ["not", "non", "never", "without", "no", "lacking", "nor", "neither", "un-"]
FR_NEGATIONS = ["non", "pas", "ne", "sans", "jamais", "ni", "dépourvu de", "dépourvue de", "dépourvus de", "dépourvues de"]


# --------------------------------------------------------------------------- readers of the sources


def _fold(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFD", text.lower()) if unicodedata.category(c) != "Mn")


def read_fna(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    with path.open(encoding="utf-8") as fh:
        lines = [line for line in fh if line.strip() and not line.startswith("#")]
    for row in csv.DictReader(lines):
        term = (row.get("term") or "").strip().lower()
        cat = (row.get("category") or "").strip().lower()
        if term and cat and cat not in out[term]:
            out[term].append(cat)
    return dict(out)


def read_floratraiter(folder: Path) -> tuple[dict[str, tuple[str, str]], dict[str, tuple[str, str]]]:
    """(state pattern -> (normal form, character), part pattern -> (normal form, part type))."""
    states: dict[str, tuple[str, str]] = {}
    for name, character in FLORATRAITER_CHARACTER.items():
        path = folder / name
        if not path.exists():
            continue
        with path.open(encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                label = row.get("label") or ""
                if label.endswith(("_leader", "_follower")) or not row.get("pattern"):
                    continue
                pattern = row["pattern"].strip().lower()
                replace = (row.get("replace") or pattern).strip().lower()
                states[pattern] = (replace or pattern, character)
    parts: dict[str, tuple[str, str]] = {}
    path = folder / "part_terms.csv"
    if path.exists():
        with path.open(encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                if row.get("label") == "part_term" and row.get("pattern"):
                    parts[row["pattern"].strip().lower()] = ((row.get("replace") or row["pattern"]).strip().lower(), row.get("type") or "")
    return states, parts


def read_obo(path: Path) -> dict[str, dict]:
    """id -> {name, exact synonyms, plural forms, is_a, opposites} for non-obsolete terms."""
    terms: dict[str, dict] = {}
    current: dict | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line == "[Term]":
            current = {"syn": [], "plural": [], "is_a": [], "opp": [], "obsolete": False}
            continue
        if line.startswith("[") or current is None:
            if line.startswith("["):
                current = None
            continue
        key, _, value = line.partition(": ")
        if key == "id":
            current["id"] = value
            terms[value] = current
        elif key == "name":
            current["name"] = value.strip().lower()
        elif key == "is_obsolete" and value.strip() == "true":
            current["obsolete"] = True
        elif key == "is_a":
            current["is_a"].append(value.split(" ")[0])
        elif key == "synonym":
            m = re.match(r'"([^"]+)"\s+(\w+)(.*)', value)
            if not m or "Spanish" in value or "Japanese" in value or "German" in value:
                continue
            text = re.sub(r"\s*\((exact|narrow|related|broad)[^)]*\)\s*$", "", m.group(1)).strip().lower()
            if "OMO:0003004" in m.group(3):
                current["plural"].append(text)
            elif m.group(2) == "EXACT":
                current["syn"].append(text)
        elif key in ("relationship", "disjoint_from") and ("is_opposite_of" in value or key == "disjoint_from"):
            current["opp"].append(value.replace("is_opposite_of ", "").split(" ")[0])
    return {k: v for k, v in terms.items() if not v["obsolete"] and "name" in v}


# --------------------------------------------------------------------------- building


def english_plural(word: str) -> list[str]:
    if " " in word:
        head, last = word.rsplit(" ", 1)
        return [f"{head} {p}" for p in english_plural(last)]
    rules = [("leaf", "leaves"), ("ium", "ia"), ("um", "a"), ("us", "i"), ("is", "es"), ("yx", "yces"), ("ex", "ices"),
             ("ix", "ices"), ("x", "xes"), ("y", "ies"), ("s", "ses"), ("a", "ae")]
    for suffix, plural in rules:
        if word.endswith(suffix) and not (suffix == "y" and word[-2:-1] in "aeiou"):
            return [word[: -len(suffix)] + plural, word + "s"] if suffix == "a" else [word[: -len(suffix)] + plural]
    return [word + "s"]


def french_forms(lemma: str) -> list[str]:
    """Gender and number inflections of a French adjective or noun lemma."""
    if " " in lemma:
        first, rest = lemma.split(" ", 1)
        if first in {"non", "peu", "petit", "plante", "sans", "en"}:
            return [lemma] + ([f"plantes {rest}s", f"plantes {rest}"] if first == "plante" else [])
        return [f"{f} {rest}" for f in french_forms(first)]
    if lemma in FR_IRREGULAR:
        return FR_IRREGULAR[lemma]
    if lemma.endswith("eux"):
        stem = lemma[:-3]
        return [lemma, stem + "euse", stem + "euses"]
    if lemma.endswith("if"):
        stem = lemma[:-2]
        return [lemma, lemma + "s", stem + "ive", stem + "ives"]
    if lemma.endswith("al"):
        return [lemma, lemma + "e", lemma + "es", lemma[:-2] + "aux"]
    if lemma.endswith("el"):
        return [lemma, lemma + "le", lemma + "s", lemma + "les"]
    if lemma.endswith("e"):
        return [lemma, lemma + "s"]
    if lemma.endswith(("s", "x")):
        return [lemma, lemma + "e", lemma + "es"]
    return [lemma, lemma + "e", lemma + "s", lemma + "es"]


def build(shared: Path, use_fna: bool = True) -> dict:
    vocab_dir = shared / "vocab"
    fna = read_fna(vocab_dir / "fna_glossary_term_category.csv") if use_fna else {}
    ft_states, ft_parts = read_floratraiter(vocab_dir / "floratraiter")
    po = read_obo(vocab_dir / "po.obo")
    pato = read_obo(vocab_dir / "pato.obo")
    po_by_name = {t["name"]: t for t in po.values()}
    pato_by_name: dict[str, dict] = {}
    for t in pato.values():
        pato_by_name.setdefault(t["name"], t)
        for s in t["syn"]:
            pato_by_name.setdefault(s, t)

    # ---- organs
    po_alias = {"leaf": "vascular leaf", "leaf blade": "leaf lamina", "vein": "leaf vein", "hair": "trichome", "bud": "shoot system bud"}
    organs: dict[str, dict] = {}
    claimed: set[str] = {f for v in RELATIVE_PARTS.values() for f in v[0]} | {f for v in POSITIONS.values() for f in v[0]}
    claimed |= {f for table in TYPE_NOUNS.values() for forms in table.values() for f in forms}
    claimed |= {"tree", "trees", "shrub", "shrubs", "herb", "herbs", "liana", "lianas", "vine", "vines", "palm", "palms",
                "subshrub", "subshrubs", "treelet", "treelets", "climber", "climbers", "epiphyte", "epiphytes", "bush", "bushes",
                "ear", "hip", "fig", "joint", "knee", "dropper", "casing", "bundle", "chamber", "channel", "cane", "glome", "gum",
                "flesh", "lid", "dot", "limb", "cell", "grain", "crest", "fringe", "membrane", "hood", "horn", "glans", "glandes",
                "even-pinnate", "wool", "whorl", "segment", "standard", "spot", "wall", "ray", "neck", "tuft", "sawtooth",
                "sawtoothlet", "scallop", "scalloplet", "sinus", "sinuses", "notch", "pit", "pore", "ridge", "scar", "face",
                "primary vein", "tertiary vein", "main stem", "series", "rank", "apices", "blotch", "blister", "mucilage",
                "resin", "nectar", "joint", "articulation", "fissure", "furrow", "groove", "channel", "isthmus", "palate"}
    for canon, (group, parent, en, fr) in ORGANS.items():
        forms = list(dict.fromkeys([canon] + en))
        term = po_by_name.get(po_alias.get(canon, canon))
        if term:
            extra = [s for s in term["syn"] + term["plural"] if len(s.split()) <= 3 and "portion" not in s and s.isascii()]
            forms += [s for s in extra if s not in forms]
        forms = [f for f in forms if len(f) > 3 and "," not in f and not f.endswith("ed") or f in en or f == canon]
        for f in list(forms):
            if f.isalpha() and f == canon:
                forms += [p for p in english_plural(f) if p not in forms]
        parents = [parent] if parent else []
        parents += [p for p in EXTRA_PARENTS.get(canon, []) if p not in parents]
        parents += [FRUITING[p] for p in list(parents) if p in FRUITING and FRUITING[p] not in parents and FRUITING[p] != canon]
        organs[canon] = {"group": group, "parents": parents, "po": term["id"] if term else None,
                         "en": forms, "fr": list(dict.fromkeys(fr))}
        claimed.update(forms)
    # organ names FloraTraiter and FNA know that the curated table does not: kept with their group
    ft_group = {"flower_part": "flower", "male_flower_part": "flower", "female_flower_part": "flower", "leaf_part": "leaf",
                "fruit_part": "fruit", "inflorescence": "inflorescence", "plant_part": "stem"}
    extra_organs: dict[str, dict] = {}
    # a term the FNA glossary knows only as a character ("dehiscent", "solitary", "versatile") is no organ
    character_only = {t for t, cats in fna.items() if "structure" not in cats and any(c in FNA_CHARACTER for c in cats)}
    for pattern, (normal, ptype) in ft_parts.items():
        if pattern in claimed or not normal or not re.fullmatch(r"[a-z][a-z \-]+", pattern) or ptype not in ft_group \
                or len(pattern) <= 3 or pattern.endswith(("ed", "ous", "ate", "al")) or pattern in character_only \
                or normal in character_only:
            continue
        target = next((c for c, v in organs.items() if normal in v["en"]), None)
        if target:
            organs[target]["en"].append(pattern)
        else:
            extra_organs.setdefault(normal, {"group": ft_group[ptype], "parents": [], "po": None, "en": [normal], "fr": []})
            if pattern not in extra_organs[normal]["en"]:
                extra_organs[normal]["en"].append(pattern)
        claimed.add(pattern)
    for term, cats in fna.items():
        if "structure" not in cats or term in claimed or not re.fullmatch(r"[a-z][a-z \-]+", term):
            continue
        if term in {"plants", "herbs", "trees", "shrubs", "vines", "lianas", "bushes", "perennials", "annuals", "biennials",
                    "subshrubs", "undershrubs", "geophytes", "winter annuals", "summer annuals", "pale1", "pale2", "apex", "base",
                    "margin", "surface", "face", "cell", "division", "series", "rank", "cycle", "body", "head", "unit"}:
            continue
        words = term.split()
        if len(words) > 1 and (words[-1] in {f for v in RELATIVE_PARTS.values() for f in v[0]} or words[0] in claimed):
            continue  # "corolla tube", "leaf scar": composed while reading, with the right parent
        po_term = po_by_name.get(term)
        extra_organs.setdefault(term, {"group": "other", "parents": [], "po": po_term["id"] if po_term else None, "en": [term], "fr": []})
        claimed.add(term)
    # FNA lists plurals as terms of their own: fold them into their singular
    for canon in list(extra_organs):
        for plural in english_plural(canon) if canon.isalpha() else []:
            if plural in extra_organs and plural != canon:
                extra_organs[canon]["en"] += [f for f in extra_organs.pop(plural)["en"] if f not in extra_organs[canon]["en"]]
    for canon, info in extra_organs.items():
        if canon not in organs:
            info["en"] = list(dict.fromkeys(info["en"] + (english_plural(canon) if canon.isalpha() else [])))
            # a glossary structure the curated table does not place ("beak", "keel", "peristome") is read as a part of
            # the organ in force when one is ("fruit beak"), and as an organ of its own otherwise
            info["carried"] = True
            organs[canon] = info

    relative = {k: {"en": en, "fr": fr} for k, (en, fr) in RELATIVE_PARTS.items()}
    positions = {k: {"en": en, "fr": fr} for k, (en, fr) in POSITIONS.items()}
    types = {kind: {t: forms for t, forms in table.items()} for kind, table in TYPE_NOUNS.items()}

    # ---- states
    organ_words = {f for info in organs.values() for f in info["en"]} | {f for v in RELATIVE_PARTS.values() for f in v[0]} \
        | {f for v in POSITIONS.values() for f in v[0]}
    states: dict[str, dict] = {}

    def add_state(term: str, character: str, source: str) -> None:
        term = term.strip().lower()
        if not term or term in organ_words or (term in STOP and term not in READMIT) or len(term) < 3 and term not in {"red"}:
            return
        if not re.fullmatch(r"[a-z][a-z \-']*[a-z]", term):
            return
        if HAIR.search(term) and character in {"surface", "architecture", "shape", "texture"}:
            character = "pubescence"
        entry = states.setdefault(term, {"character": character, "src": []})
        if source not in entry["src"]:
            entry["src"].append(source)

    for term, cats in fna.items():
        if "structure" in cats:
            continue
        ordered = sorted((c for c in cats if c in FNA_CHARACTER), key=lambda c: FNA_ORDER.index(c) if c in FNA_ORDER else 99)
        if ordered:
            add_state(term, FNA_CHARACTER[ordered[0]], "fna")
    for pattern, (normal, character) in ft_states.items():
        known = pattern in states
        add_state(pattern, character, "floratraiter")
        # FloraTraiter's lists are broad (its venation list holds "striate"); FNA's category wins
        # except for margins and hairs, where FloraTraiter is the more specific
        if pattern in states and (not known or character == "margin" or HAIR.search(pattern)):
            states[pattern]["character"] = "pubescence" if HAIR.search(pattern) else character
    # curated terms (synonym tables, French tables) are states even when no list has them
    curated_char = {
        "hairy": "pubescence", "toothed": "margin", "lobed": "margin", "compound": "architecture", "stalked": "architecture",
        "present": "presence", "absent": "presence", "opposite": "arrangement", "alternate": "arrangement", "whorled": "arrangement",
        "subopposite": "arrangement", "spiral": "arrangement", "clustered": "arrangement", "solitary": "arrangement",
        "entire": "margin", "serrate": "margin", "dentate": "margin", "crenate": "margin", "undulate": "margin", "sinuate": "margin",
        "revolute": "margin", "ciliate": "margin", "serrulate": "margin", "denticulate": "margin", "crenulate": "margin",
        "white": "colour", "whitish": "colour", "cream": "colour", "tree": "habit", "treelet": "habit", "shrub": "habit",
        "subshrub": "habit", "liana": "habit", "herb": "habit", "epiphyte": "habit", "climber": "habit", "vine": "habit",
        "male": "sexuality", "female": "sexuality", "fertile": "sexuality", "sterile": "sexuality", "bisexual": "sexuality",
        "unisexual": "sexuality", "terminal": "position", "axillary": "position", "lateral": "position", "basal": "position",
        "apical": "position", "thick": "texture", "thin": "texture", "simple": "architecture", "free": "fusion",
        "connate": "fusion", "adnate": "fusion", "united": "fusion", "exserted": "position", "included": "position",
        "prominent": "prominence", "impressed": "prominence", "inconspicuous": "prominence", "visible": "prominence",
        "glandular": "surface", "punctate": "surface", "discolorous": "colour", "concolorous": "colour", "asymmetric": "shape",
        "parasitic": "habit", "aquatic": "habit", "terrestrial": "habit", "epiphytic": "habit", "winged": "architecture",
        "exstipulate": "architecture", "stipulate": "architecture", "unbranched": "architecture", "branched": "architecture",
        "fissured": "surface", "scaly": "surface", "flattened": "shape", "compressed": "shape", "ribbed": "shape",
        "quadrangular": "shape", "terete": "shape", "silvery": "colour", "olive": "colour", "golden": "colour",
        "pinnately veined": "venation", "reticulate": "venation", "parallel": "venation", "half-inferior": "position",
        "extra-axillary": "position", "shiny": "surface", "dull": "surface", "glossy": "surface",
        **{c: "colour" for c in COLOURS},
    }
    for term, character in curated_char.items():
        states.setdefault(term, {"character": character, "src": []})
        states[term]["character"] = character
        states[term]["src"].append("curated")
    for term in list(FR_STATES) + list(EN_SYNONYMS):
        if term not in states and re.fullmatch(r"[a-z][a-z \-]*", term):
            pt = pato_by_name.get(term)
            states[term] = {"character": "pubescence" if HAIR.search(term) else "shape", "src": ["curated"]}
            if pt:
                states[term]["pato"] = pt["id"]
    for broad, members in BROADER.items():
        for m in members:
            if m not in states and re.fullmatch(r"[a-z][a-z0-9 \-]*", m):
                states[m] = {"character": states.get(broad, {}).get("character", "shape"), "src": ["curated"]}
    # habit nouns and their plurals
    habit_nouns = {"tree": ["trees", "small tree", "small trees", "large tree", "large trees"], "treelet": ["treelets"],
                   "shrub": ["shrubs", "shrublet", "shrublets", "bush", "bushes"], "subshrub": ["subshrubs", "undershrub", "undershrubs", "suffrutex"],
                   "liana": ["lianas", "woody climber", "woody climbers"], "herb": ["herbs", "herbaceous plant", "herbaceous plants", "forb"],
                   "epiphyte": ["epiphytes"], "climber": ["climbers", "climbing plant", "climbing plants"], "vine": ["vines"],
                   "palm": ["palms"], "fern": ["ferns"], "grass": ["grasses"], "geophyte": ["geophytes"], "hemiepiphyte": ["hemiepiphytes"]}
    for noun in habit_nouns:
        states.setdefault(noun, {"character": "habit", "src": ["curated"]})["character"] = "habit"

    # ---- synonyms, antonyms, PATO ids, French forms
    for term, entry in states.items():
        pt = pato_by_name.get(term)
        if pt:
            entry["pato"] = pt["id"]
            syn = [s for s in pt["syn"] + ([pt["name"]] if pt["name"] != term else []) if s != term and re.fullmatch(r"[a-z][a-z \-]*", s)]
            if syn:
                entry["syn"] = sorted(set(syn))
        ft = ft_states.get(term)
        if ft and ft[0] != term and ft[0] in states and (ft[0][:4] == term[:4]):
            entry.setdefault("syn", [])
            entry["syn"] = sorted(set(entry["syn"]) | {ft[0]})  # spelling variants FloraTraiter normalises
        if term in EN_SYNONYMS:  # plain-English glossary wording, kept apart from technical synonyms
            entry["gloss"] = [g for g in EN_SYNONYMS[term] if g not in entry.get("syn", [])]
        if term in habit_nouns:
            entry["forms"] = habit_nouns[term]
        if term in IMPLIES:
            entry["implies"] = list(IMPLIES[term])
        if term in FR_STATES and FR_STATES[term]:
            entry["fr"] = sorted({f for lemma in FR_STATES[term] for f in french_forms(lemma)})
    antonyms: set[tuple[str, str]] = set()
    for t in pato.values():
        for other in t["opp"]:
            o = pato.get(other)
            for a in [t["name"]] + t["syn"]:
                for b in ([o["name"]] + o["syn"]) if o else []:
                    if a in states and b in states and a != b:
                        antonyms.add(tuple(sorted((a, b))))
    for a, b in EN_ANTONYMS:
        if a in states and b in states:
            antonyms.add(tuple(sorted((a, b))))
    for a, b in sorted(antonyms):
        states[a].setdefault("ant", []).append(b)
        states[b].setdefault("ant", []).append(a)
    for entry in states.values():
        entry.pop("src", None)
        for key in ("syn", "ant", "gloss"):
            if key in entry:
                entry[key] = sorted(set(entry[key]))

    sources = [
        {"name": "Flora of North America glossary (term -> category), via FLOPO", "license": "not recorded by FLOPO; term and category only",
         "used": use_fna, "url": "https://github.com/flora-phenotype-ontology/flopoontology"},
        {"name": "FloraTraiter term lists", "license": "MIT, Copyright (c) 2023 Raphael LaFrance", "used": True,
         "url": "https://github.com/rafelafrance/FloraTraiter"},
        {"name": "Plant Ontology (PO)", "license": "CC BY 4.0, Planteome", "used": True, "url": "http://purl.obolibrary.org/obo/po.obo"},
        {"name": "PATO", "license": "CC BY 3.0", "used": True, "url": "http://purl.obolibrary.org/obo/pato.obo"},
        {"name": "Herbaria hand-written tables (organ groups, English glossary synonyms, French equivalents)", "license": "project license",
         "used": True},
    ]
    return {
        "version": 1,
        "sources": sources,
        "organs": organs,
        "relative_parts": relative,
        "organ_adjectives": ORGAN_ADJECTIVES,
        "positions": positions,
        "types": types,
        "states": dict(sorted(states.items())),
        "broader": BROADER,
        "modifiers": {"en": EN_MODIFIERS, "fr": FR_MODIFIERS},
        "degree": {"en": EN_DEGREE, "fr": FR_DEGREE},
        "negations": {"en": EN_NEGATIONS, "fr": FR_NEGATIONS},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--no-fna", action="store_true", help="leave the FNA glossary out (its license is not recorded)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    vocab = build(args.shared, use_fna=not args.no_fna)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(vocab, ensure_ascii=False, separators=(",", ":"), sort_keys=False)
    args.out.write_text(text + "\n", encoding="utf-8")
    print(f"{args.out}: {len(vocab['organs'])} organs, {len(vocab['states'])} states, {len(text) / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
