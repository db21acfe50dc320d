"""Embedded QA set: questions answerable from the embedded Wikipedia corpus.

Two sources, both tied to one evidence article of the corpus (``metadata.evidence_title``):

* ``fanoutqa`` - sub-questions of the FanOutQA dev set (CC BY-SA 4.0) whose evidence article is in the corpus and
  whose answer is stated in one of that article's passages. A string or number answer must appear as a whole-word
  span after SQuAD normalisation (which also makes ``1,631`` and ``1631`` the same); a list answer is kept only if
  every element is stated; booleans and dicts are skipped. Ids ``fanout-<FanOutQA id>``.
* ``description`` - "reverse dictionary" questions from Wikipedia's short description of an article, e.g.
  ``"Novel in verse by Alexander Pushkin"`` -> "What is the title of the novel in verse by Alexander Pushkin?"
  with answer ``"Eugene Onegin"``. A description is used only if it is unique in the corpus, has at least three
  words, does not contain the title, and is specific (see :func:`is_specific_description`). Ids ``desc-<n>``
  numbered in title order.

Gold answers are strings; the first is the canonical one. Each row is
``{"id", "question", "golden_answers", "metadata": {"source", "evidence_title", "topic", "answer_parts", ...}}``,
where ``answer_parts`` lists the spans that are stated in the evidence article (one per list element).
The split is fixed by a hash of the id: about 20% test, 80% train.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search_gym.corpora import stable_hash, write_jsonl_atomic
from search_gym.corpora.wiki_embedded import WikiArticle, format_contents, load_summaries, split_passages
from search_gym.data.qa import normalize_answer

__all__ = [
    "TEST_PERCENT",
    "QAStats",
    "qa_split",
    "strip_parenthetical",
    "answer_stated",
    "fanout_questions",
    "is_specific_description",
    "description_question",
    "description_questions",
    "build_qa",
]

TEST_PERCENT = 20
_SPLIT_SALT = "search-gym-qa-split-v1"

# Words that mark a description as singling out one thing ("Capital and largest city of Botswana").
_UNIQUE_MARKERS = frozenset(
    "capital largest longest highest tallest deepest oldest biggest smallest first last only most founder "
    "founding founded inventor discoverer".split()
)
# Class nouns for which a couple of proper nouns still leave many candidates ("City in the Kansai region of
# Japan", "Landlocked country in Central Asia"): such descriptions need a number or a uniqueness word.
_GENERIC_NOUNS = frozenset(
    "city town village municipality commune region province county district state country river lake mountain "
    "mountains island islands archipelago peninsula desert settlement suburb neighbourhood neighborhood "
    "prefecture department pharaoh king queen emperor ruler".split()
)
# Person nouns outside the "People" topic ("Scottish physicist and mathematician (1831–1879)" is Uncategorized).
_PERSON_NOUNS = frozenset(
    "philosopher polymath poet caliph king queen emperor empress monarch saint magnate pope sage prophet "
    "pharaoh sultan tsar shah khan".split()
)
_PERSON_SUFFIXES = ("ist", "er", "or", "ian", "man", "woman", "ess")
_NOT_PERSONS = frozenset(
    "war river computer reactor accelerator center centre order tower sector corridor water letter chapter "
    "theater number cluster processor meteor motor power manner matter border calendar harbor harbour".split()
)
# Occupations that mark a person even without dates ("Semi-legendary Chinese philosopher, founder of Taoism").
_OCCUPATIONS = _PERSON_NOUNS | frozenset(
    "writer author painter composer scientist mathematician physicist chemist astronomer statesman politician "
    "explorer inventor theologian scholar monk priest general admiral warlord conqueror leader ruler prince "
    "princess dictator revolutionary activist singer actor actress musician architect sculptor founder "
    "co-founder apostle disciple wife husband son daughter mother father".split()
)
# Titles that open a description of a reign rather than a life ("King of Sweden (1592–1599)").
_ROLE_NOUNS = _PERSON_NOUNS | frozenset(
    "president prime chancellor governor duke duchess prince princess leader ruler general consort regent "
    "archbishop bishop first".split()
)
# Groups of people have an active period, not a life ("English rock band (1968–1980)").
_GROUP_NOUNS = frozenset("band group duo trio quartet ensemble orchestra troupe brothers sisters".split())
# Nouns of creative works: such descriptions ask for a title ("Play by Samuel Beckett").
_WORK_NOUNS = frozenset(
    "film novel novella painting play poem opera symphony song album book composition sculpture musical ballet "
    "story treatise epic series sitcom cantata concerto oratorio mural fresco manuscript essay comic manga "
    "anime trilogy saga".split()
)
_LIST_TITLE = re.compile(r"^(List|Lists|Outline|Index|Timeline|Glossary|Bibliography) of\b")
_TRAILING_PAREN = re.compile(r"\s*\(([^()]*)\)\s*$")
# A year as written in lifespans: "1868", "c. 470", "c.1098", "after 238 BCE", "18/17 BC", "1460s", "AD 21".
_YEAR = r"(?:(?:c\.|ca\.|after|before|trad\.|AD)\s*)*\d{1,4}(?:/\d{1,4})?s?(?:\s*(?:BC|BCE|AD|CE))?"
_LIFESPAN = re.compile(rf"^(?P<a>{_YEAR})\s*[–-]\s*(?P<b>{_YEAR})$")
_BORN = re.compile(rf"^born (?P<y>{_YEAR})$")
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*$")
_NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                 "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
                 "twenty"]


@dataclass(frozen=True)
class QAStats:
    """What :func:`build_qa` wrote: row counts per (source, split)."""

    train_path: Path
    test_path: Path
    counts: dict[str, dict[str, int]]

    @property
    def total(self) -> int:
        return sum(sum(per_split.values()) for per_split in self.counts.values())


def qa_split(qa_id: str) -> str:
    """``"test"`` for about TEST_PERCENT% of ids, else ``"train"``; depends on the id alone, so it never moves."""
    return "test" if stable_hash(_SPLIT_SALT, qa_id) % 100 < TEST_PERCENT else "train"


def strip_parenthetical(title: str) -> str:
    """``"Casablanca (film)"`` -> ``"Casablanca"``."""
    return _TRAILING_PAREN.sub("", title).strip() or title


def _span_in(normalised_answer: str, normalised_text: str) -> bool:
    return bool(normalised_answer) and f" {normalised_answer} " in f" {normalised_text} "


def answer_stated(answer: str, passages: list[str]) -> bool:
    """Whether ``answer`` appears as a whole-word span of one passage, after SQuAD normalisation."""
    target = normalize_answer(answer)
    return any(_span_in(target, normalize_answer(p)) for p in passages)


# ---------------------------------------------------------------------------------------------- FanOutQA


def _iter_subquestions(question: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for sub in question.get("decomposition") or []:
        yield sub
        yield from _iter_subquestions(sub)


def _literal_in(form: str, passages: list[str]) -> bool:
    return any(form in p for p in passages)


def _stated_forms(value: Any, question: str, passages: list[str]) -> list[str]:
    """Gold-answer strings for one FanOutQA answer value, the form stated in the article first; [] if the value
    is not stated (or is a type we do not turn into questions: booleans, dicts, nested lists, None)."""
    if isinstance(value, bool) or value is None or isinstance(value, (dict, list)):
        return []
    if isinstance(value, str) and re.fullmatch(r"\d{1,3}(,\d{3})+|\d+", value.strip()):
        value = int(value.replace(",", ""))  # "1631" and "600,000,000" are numbers in string form
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        counting = question.lower().startswith("how many")
        if abs(value) < 100 and not counting:
            # A one- or two-digit number occurs in most articles by chance ("What is the age of ...? 77").
            return []
        digits, grouped = str(value), f"{value:,}"
        golden = []
        if answer_stated(digits, passages):  # normalisation drops commas, so this also finds "1,631"
            golden.append(digits)
            if grouped != digits and _literal_in(grouped, passages):
                golden.append(grouped)
        if counting and 2 <= value < len(_NUMBER_WORDS) and answer_stated(_NUMBER_WORDS[value], passages):
            # Counts are usually spelled out in prose ("four MVP awards"). Only stated forms become gold answers,
            # so every gold answer is a span of the evidence article.
            golden = [_NUMBER_WORDS[value]] + golden
        return golden
    if isinstance(value, float):
        plain, grouped = repr(value), f"{value:,}"
        if not answer_stated(plain, passages):
            return []
        return [plain] + ([grouped] if grouped != plain and _literal_in(grouped, passages) else [])
    text = " ".join(str(value).split())
    return [text] if text and answer_stated(text, passages) else []


def _join_list(items: list[str]) -> list[str]:
    if len(items) == 1:
        return [items[0]]
    return [", ".join(items[:-1]) + " and " + items[-1], ", ".join(items)]


def fanout_questions(fanout: list[dict[str, Any]], articles: dict[str, WikiArticle],
                     passages: dict[str, list[str]]) -> list[dict[str, Any]]:
    """FanOutQA sub-questions answerable from the corpus, in file order, first occurrence of an id or question."""
    rows: list[dict[str, Any]] = []
    seen_ids: set[str] = set()
    seen_questions: set[str] = set()
    for top in fanout:
        for sub in _iter_subquestions(top):
            title = (sub.get("evidence") or {}).get("title")
            question = " ".join(str(sub.get("question") or "").split())
            if not title or title not in articles or not question:
                continue
            key = normalize_answer(question)
            if sub["id"] in seen_ids or key in seen_questions:
                continue
            answer = sub.get("answer")
            if isinstance(answer, list):
                # Every element must be stated; each contributes its first stated surface form.
                element_forms = [_stated_forms(element, question, passages[title]) for element in answer]
                if not answer or not all(element_forms):
                    continue
                parts = [forms[0] for forms in element_forms]
                golden, answer_type = _join_list(parts), "list"
            else:
                stated = _stated_forms(answer, question, passages[title])
                if not stated:
                    continue
                golden, parts, answer_type = stated, stated[:1], type(answer).__name__
            seen_ids.add(sub["id"])
            seen_questions.add(key)
            rows.append({
                "id": f"fanout-{sub['id']}",
                "question": question,
                "golden_answers": golden,
                "metadata": {
                    "source": "fanoutqa",
                    "evidence_title": title,
                    "topic": articles[title].topic,
                    "answer_parts": parts,
                    "answer_type": answer_type,
                    "parent_id": top.get("id"),
                },
            })
    return rows


# ------------------------------------------------------------------------------------ descriptions


def _capitalised(word: str) -> bool:
    return bool(re.match(r"^[\"'(]*[A-Z]", word))


def _words(phrase: str) -> list[str]:
    return [w.strip(",;:()\"'").lower() for w in phrase.split()]


def _is_person_noun(word: str) -> bool:
    if word in _OCCUPATIONS:
        return True
    return word.isalpha() and word.endswith(_PERSON_SUFFIXES) and word not in _NOT_PERSONS


def _describes_person(description: str, topic: str) -> bool:
    """People-topic articles, plus lifespan descriptions ending in a person noun in other topics."""
    if topic == "People":
        return True
    words = _words(description)
    if len(words) > 2 and words[0] in _ROLE_NOUNS - {"first"} and words[1] == "of":
        return True  # "King of Macedon from 336 to 323 BC"
    if _head_noun(description) in _OCCUPATIONS:
        return True
    paren = _TRAILING_PAREN.search(description)
    if not paren or not (_LIFESPAN.match(paren.group(1).strip()) or _BORN.match(paren.group(1).strip())):
        return False
    return _is_person_noun(_head_noun(_TRAILING_PAREN.sub("", description)))


def is_specific_description(description: str, topic: str) -> bool:
    """Whether a short description plausibly names one thing rather than a class.

    People: a full lifespan "(1868–1934)", a role with dates ("President of Egypt from 1970 to 1981"), a
    "(born ...)" after a proper noun beyond the first word ("Polish and French filmmaker (born 1933)", but not
    "American singer (born 1958)"), or a uniqueness word ("Founder of the Akkadian Empire"). Others: a number
    (year, atomic number), a uniqueness word ("capital", "largest", "first"), "by <Name>" (a work by someone), or
    at least two capitalised words beyond the first unless the class noun is a generic place or title
    ("City in the Kansai region of Japan" names one of many).
    """
    paren = _TRAILING_PAREN.search(description)
    inner = paren.group(1).strip() if paren else ""
    head = _TRAILING_PAREN.sub("", description)
    head_words = head.split()
    lowered = set(_words(head))
    caps_beyond_first = sum(_capitalised(w) for w in head_words[1:])
    if lowered & _UNIQUE_MARKERS:
        return True
    if _describes_person(description, topic):
        if _LIFESPAN.match(inner) or re.search(r"\d", head):
            return True
        return bool(_BORN.match(inner)) and caps_beyond_first >= 1
    if re.search(r"\d", description):
        return True
    if re.search(r"\bby [\"'(]*[A-Z]", head):
        return True
    return caps_beyond_first >= 2 and not lowered & _GENERIC_NOUNS


_TRAILING_PUNCT = ",;:.)"


class _CaseModel:
    """Decides whether a description's first word is a common word to lowercase mid-sentence ("Novel in verse"
    -> "novel in verse") or a proper adjective/noun to keep ("American", "Roman").

    It counts, over all extracts, lowercase uses of the word against capitalised uses that follow a lowercase
    word and precede one (so neither sentence starts nor "Amazon River" make "river" a proper noun). Before a
    capitalised word it compares the two-word spellings instead, so "Ancient Greek" becomes "ancient Greek" while
    "Holy Roman Emperor" keeps its capital; for an unseen pair the word must be lowercase three times as often as
    capitalised mid-sentence. Only the words asked about are counted, which keeps this well under a second."""

    def __init__(self, articles: dict[str, WikiArticle], words: set[str]):
        self.lower: Counter[str] = Counter()
        self.upper: Counter[str] = Counter()
        self.pairs: Counter[tuple[str, str]] = Counter()
        self.before_capital: Counter[str] = Counter()  # capitalised mid-sentence right before another capital
        bare = words | {w.lower() for w in words}
        wanted = bare | {w + p for w in bare for p in _TRAILING_PUNCT}
        # "\x00" separates articles so that no pair spans two extracts.
        tokens = " \x00 ".join(articles[t].extract for t in sorted(articles)).split()
        for i in [i for i, token in enumerate(tokens) if token in wanted]:
            raw = tokens[i]
            word = raw.rstrip(_TRAILING_PUNCT)
            if word[0].islower():
                self.lower[word] += 1
            prev = tokens[i - 1] if i else "\x00"
            if not prev[:1].islower() or _SENTENCE_END.search(prev):
                continue  # sentence start, or next to another capitalised word
            nxt = tokens[i + 1].strip("\"'(),;:.") if i + 1 < len(tokens) else ""
            if nxt[:1].isupper() and raw == word:
                self.pairs[word, nxt] += 1
                if word[0].isupper():
                    self.before_capital[word] += 1
            elif word[0].isupper():
                self.upper[word] += 1

    @staticmethod
    def first_word(phrase: str) -> str:
        """The word :meth:`mid_sentence` may lowercase, as counted (punctuation and "'s" removed)."""
        word = phrase.split(" ", 1)[0].rstrip(",;:")
        return word[:-2] if word.endswith("'s") else word

    def mid_sentence(self, phrase: str) -> str:
        first, _, rest = phrase.partition(" ")
        word = self.first_word(phrase)
        if not (len(word) > 1 and word[0].isupper() and word[1:].islower() and word.replace("-", "").isalpha()):
            return phrase
        next_word = rest.split(" ", 1)[0].strip(",;:()")
        lower_pair, upper_pair = self.pairs[word.lower(), next_word], self.pairs[word, next_word]
        if next_word[:1].isupper() and word == first:
            if lower_pair + upper_pair:
                common = lower_pair > upper_pair
            else:
                # Unseen pair: lowercase a word mostly written in lowercase ("Extinct Semitic", "Ancient
                # Eurasian"), keep one that often starts names ("Royal Navy officer", "West Germanic").
                capitalised = self.upper[word] + self.before_capital[word]
                common = self.lower[word.lower()] > 3 * capitalised
        else:
            common = self.lower[word.lower()] > self.upper[word]
        return f"{first[0].lower()}{first[1:]} {rest}".strip() if common else phrase


def _head_noun(phrase: str) -> str:
    """Last word before the first preposition or comma: "monolithic statues on Easter Island" -> "statues"."""
    head: list[str] = []
    for word in phrase.split():
        bare = word.strip(",;:").lower()
        if bare in {"of", "in", "on", "at", "by", "from", "between", "with", "for", "that", "which", "who", "and"}:
            break
        if head and bare.endswith(("ing", "ed")):  # "famine affecting ...": a participle ends the noun phrase
            break
        head.append(bare)
        if word.endswith((",", ";", ":")):
            break
    return head[-1] if head else ""


def _is_plural(noun: str) -> bool:
    return (noun.endswith("s") and not noun.endswith(("ss", "us", "is", "ics", "'s"))
            and noun not in {"series", "species", "means"})


def description_question(title: str, article: WikiArticle, case: _CaseModel) -> str:
    """Turn an article's short description into a question whose answer is the title."""
    description = _clean_description(article.description)
    paren = _TRAILING_PAREN.search(description)
    inner = paren.group(1).strip() if paren else ""
    head = _TRAILING_PAREN.sub("", description)
    if _describes_person(description, article.topic):
        lifespan = _LIFESPAN.match(inner) if inner else None
        born = _BORN.match(inner) if inner else None
        phrase = case.mid_sentence(head)
        # "King of Sweden (1592–1599)" dates a reign and "King of Poland (1587–1632), King of Sweden (...)" has
        # several: only a description that starts with a nationality or trade gets "lived from".
        first = _words(head)[0] if head.split() else ""
        if lifespan and (first in _ROLE_NOUNS or "(" in head):
            lifespan = None
            phrase = case.mid_sentence(description)
            return f"Who was the {phrase}?"
        if lifespan:
            start, end = lifespan.group("a").strip(), lifespan.group("b").strip()
            if set(_words(head)) & _GROUP_NOUNS:
                return f"Which {phrase} was active from {start} to {end}?"
            return f"Which {phrase} lived from {start} to {end}?"
        if born:
            return f"Which {phrase} was born in {born.group('y').strip()}?"
        return f"Who was the {case.mid_sentence(description)}?"
    if paren and not re.search(r"\d", inner):
        # "(Am)", "(Dy)": a chemical symbol or gloss that reads oddly in a question and hints at the answer.
        description = head
    phrase = case.mid_sentence(description)
    if article.topic == "Arts" and set(_words(head)[:6]) & _WORK_NOUNS:
        return f"What is the title of the {phrase}?"
    plural = _is_plural(_head_noun(phrase))
    past = article.topic == "History"
    verb = ("were" if past else "are") if plural else ("was" if past else "is")
    if plural or (len(phrase.split()) <= 6 and stable_hash("desc-template", title) % 2):
        return f"What {verb} the {phrase} called?"
    return f"What {verb} the name of the {phrase}?"


def _clean_description(description: str) -> str:
    """Whitespace collapsed, "; " read as ", ", a leading article dropped (templates add their own "the")."""
    description = " ".join(description.replace("; ", ", ").split())
    return re.sub(r"^(A|An|The) ", "", description)


def description_questions(articles: dict[str, WikiArticle]) -> list[dict[str, Any]]:
    """Description-derived questions, in title order, numbered ``desc-0``, ``desc-1``, ..."""
    counts = Counter(" ".join(a.description.split()).casefold() for a in articles.values() if a.description)
    accepted: list[tuple[str, str]] = []
    for title in sorted(articles):
        article = articles[title]
        description = " ".join(article.description.split())
        if not description or not article.extract or not description[0].isalnum():
            continue
        if description.lower().startswith(("one of ", "any of ", "several ", "some ")):
            continue  # names a member of a group by definition
        if counts[description.casefold()] > 1 or len(description.split()) < 3:
            continue
        if _LIST_TITLE.match(title) or "disambiguation" in description.lower() or "Wikimedia" in description:
            continue
        if _span_in(normalize_answer(strip_parenthetical(title)), normalize_answer(description)):
            continue
        if not is_specific_description(description, article.topic):
            continue
        accepted.append((title, description))
    case = _CaseModel(articles, {_CaseModel.first_word(_clean_description(d)) for _, d in accepted})
    rows: list[dict[str, Any]] = []
    for title, description in accepted:
        short_title = strip_parenthetical(title)
        rows.append({
            "id": f"desc-{len(rows)}",
            "question": description_question(title, articles[title], case),
            "golden_answers": [title] if short_title == title else [title, short_title],
            "metadata": {
                "source": "description",
                "evidence_title": title,
                "topic": articles[title].topic,
                "answer_parts": [short_title],
                "description": description,
            },
        })
    return rows


# ---------------------------------------------------------------------------------------------- build


def build_qa(summaries_path: str | os.PathLike[str], fanout_path: str | os.PathLike[str],
             out_dir: str | os.PathLike[str]) -> QAStats:
    """Build both QA sources and write ``qa_train.jsonl`` and ``qa_test.jsonl`` atomically into ``out_dir``."""
    articles = load_summaries(summaries_path)
    with open(fanout_path, encoding="utf-8") as f:
        fanout = json.load(f)
    # The corpus stores title + text, so "stated in a passage" is checked against exactly that contents string.
    # Only FanOutQA evidence articles need their passages (a description question's answer is the title line).
    evidence = {(sub.get("evidence") or {}).get("title") for top in fanout for sub in _iter_subquestions(top)}
    passages = {t: [format_contents(t, p) for p in split_passages(articles[t].extract)]
                for t in sorted(evidence & articles.keys())}
    rows = fanout_questions(fanout, articles, passages) + description_questions(articles)
    out_dir = Path(out_dir)
    by_split: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
    counts: dict[str, dict[str, int]] = {}
    for row in rows:
        split = qa_split(row["id"])
        by_split[split].append(row)
        per_source = counts.setdefault(row["metadata"]["source"], {"train": 0, "test": 0})
        per_source[split] += 1
    train_path, test_path = out_dir / "qa_train.jsonl", out_dir / "qa_test.jsonl"
    write_jsonl_atomic(train_path, by_split["train"])
    write_jsonl_atomic(test_path, by_split["test"])
    return QAStats(train_path=train_path, test_path=test_path, counts=counts)

