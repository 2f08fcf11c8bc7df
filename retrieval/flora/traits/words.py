"""The function words the trait reader knows, in English and French (folded: no accents).

They are not traits, but they decide how traits attach: articles and qualifiers are skipped before a head organ,
'with'/'sans' introduce an organ that is present or absent, conjunctions keep a run of states together
('white or pink') and 'but'/'mais' end one.
"""

from __future__ import annotations

ARTICLES = {"the", "an", "its", "their", "each", "both", "all", "these", "those", "le", "la", "les", "l", "un", "une",
            "des", "du", "de", "d", "au", "aux", "ses", "sa", "son", "leur", "leurs", "ce", "ces", "cette", "chaque", "tous", "toutes"}
# words that qualify an organ without naming a character of it ('young leaves', 'feuilles adultes')
QUALIFIERS = {"young", "old", "older", "oldest", "mature", "juvenile", "upper", "lower", "uppermost", "lowermost", "basal", "apical",
              "distal", "proximal", "terminal", "lateral", "central", "median", "inner", "outer", "primary", "secondary",
              "tertiary", "main", "major", "minor", "larger", "smaller", "fertile", "sterile", "male", "female", "staminate",
              "pistillate", "bisexual", "fruiting", "flowering", "new", "first", "ultimate", "leafy", "adult", "dry", "fresh",
              "living", "ripe", "unripe", "immature", "developing", "opened", "open", "jeunes", "jeune", "vieux", "vieilles",
              "ages", "adultes", "adulte", "superieures", "inferieures", "superieure", "inferieure", "grandes", "petites",
              "grande", "petite", "large", "small", "long", "short", "lowest", "middle", "other", "fertiles"}
QUANTIFIERS = {"numerous", "many", "several", "few", "some", "nombreux", "nombreuses", "plusieurs", "quelques", "rares",
               "two", "three", "four", "five", "six", "deux", "trois", "quatre", "cinq", "single", "seul", "seule", "solitary"}
CONJUNCTIONS = {"and", "or", "to", "nor", "&", "and/or", "et", "ou", "jusqu'a", "sometimes", "but", "mais", "then", "puis",
                "becoming", "devenant", "turning"}
WITH = {"with", "having", "bearing", "avec", "muni", "munie", "munis", "munies", "pourvu", "pourvue", "pourvus",
        "pourvues", "portant", "garni", "garnie", "garnis", "garnies"}
WITHOUT = {"without", "lacking", "sans", "depourvu", "depourvue", "depourvus", "depourvues"}
# words that end a run of states: 'glabrous but ciliate' says two things
BREAKS = {"but", "mais", "whereas", "while", "tandis", "alors"}
# axes that belong to an inflorescence when one is in force ('inflorescence branch')
AXES = {"branch", "stem", "rachis", "internode", "node", "twig"}
HABIT_NOUNS = {"tree", "treelet", "shrub", "subshrub", "liana", "herb", "epiphyte", "climber", "vine", "palm", "fern", "grass",
               "geophyte", "hemiepiphyte"}


def articles(lang: str) -> set[str]:
    """Articles of `lang`: 'a' is one in English, while 'à' (folded to 'a') means 'with' or 'to' in French."""
    return ARTICLES | ({"a"} if lang == "en" else set())


def conjunctions(lang: str) -> set[str]:
    return CONJUNCTIONS | ({"a"} if lang == "fr" else set())


def with_words(lang: str) -> set[str]:
    return WITH | ({"a"} if lang == "fr" else set())
