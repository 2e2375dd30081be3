"""Baselines that need no training. The "object similarity" baseline (paper Table 1, row 1) is the
floor every trained model must clear.

Object similarity: for one query, every detector class gets a similarity to the **target phrase**
(``entities[target]``); on every sampled frame the proposal whose class is most similar wins, ties
broken by the detector score (the highest wins; a further tie keeps the first proposal). The time
span is the whole clip: ``[segment begin, segment end)``, exclusive end, so that tIoU compares the
clip's full frame range with the ground truth. A frame whose proposals are all padding
(``box_labels == -1``) gets the full-frame box ``[0, 0, width, height]``, so every sampled frame of
the span has a box as the contract requires.

Class-to-phrase similarity, two kinds:

* **GloVe** (``glove_path``: a GloVe/word2vec text file, ``word v1 ... vd`` per line): cosine between
  the mean vector of the phrase's words (stop words dropped) and the mean vector of the class
  name's words; a class name with alternatives (``"ball/sports_ball"``) takes the best alternative.
  A class none of whose words has a vector scores -1; a phrase none of whose words has a vector
  falls back to the lexical score.
* **Lexical** (default): words are lower-cased and singularised (``dogs`` -> ``dog``,
  ``people`` -> ``person``). A class name is split into alternatives at ``/`` and into words at
  ``_``, ``-`` and spaces. A class word matches a phrase word when equal (1.0), when both are in
  one close synonym group (0.9: ``man`` ~ ``adult``, ``bike`` ~ ``bicycle``), or when the phrase
  word falls under a broad class (0.6: ``boy`` ~ ``person``). An alternative whose words all match
  scores the weakest of its word matches; otherwise its head word (the last one: ``ball`` in
  ``sports_ball``) scores half its match, any other word a quarter. The class score is its best
  alternative. So "the red ball" -> ``ball/sports_ball`` 1.0; "a man" -> ``adult`` 0.9,
  ``person`` 0.6, ``child`` 0.

Everything per frame and proposal is vectorised: the per-query class-similarity vector (C,) is
gathered by the (T, M) label array and reduced with numpy; Python loops only run over the class
vocabulary (per distinct phrase, cached) and over queries.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .evaluation import Prediction
from .schema import DatasetSchemaError

BASELINES = ("object-similarity",)

_WORD = re.compile(r"[a-z0-9]+")
STOP_WORDS = frozenset(
    "a an the this that these those its his her their our my your of in on at to from with by for and or "
    "is are was were be been being who what which whom whose where when there here some any".split()
)
_IRREGULAR = {
    "people": "person", "men": "man", "women": "woman", "children": "child", "mice": "mouse",
    "geese": "goose", "feet": "foot", "teeth": "tooth", "oxen": "ox", "knives": "knife", "leaves": "leaf",
    "wolves": "wolf", "calves": "calf", "sheep": "sheep", "fish": "fish", "bus": "bus", "buses": "bus",
    "glasses": "glass", "species": "species",
}
# Close synonym groups (score 0.9). Words are singular.
SYNONYM_GROUPS: tuple[frozenset[str], ...] = tuple(
    frozenset(group.split())
    for group in (
        "adult man woman guy lady gentleman grownup",
        "child kid boy girl",
        "baby infant toddler",
        "person human someone somebody pedestrian",
        "car automobile sedan taxi cab jeep",
        "bus truck lorry van",
        "bicycle bike",
        "motorcycle motorbike",
        "aircraft airplane plane aeroplane jet helicopter",
        "watercraft boat ship canoe kayak yacht",
        "cellphone phone smartphone mobile",
        "screen monitor tv television",
        "sofa couch",
        "dog puppy",
        "cat kitten",
        "cattle cow bull calf ox",
        "sheep goat lamb",
        "hamster rat mouse",
        "ball football basketball baseball volleyball",
        "table desk",
        "dish plate bowl",
        "cup mug",
        "toy doll teddy",
        "racket racquet",
        "refrigerator fridge",
        "fruit apple banana orange",
        "vegetable carrot broccoli",
    )
)
# Broad classes (score 0.6): a word of the group under the key counts as that class.
BROAD_CLASSES: dict[str, frozenset[str]] = {
    "person": frozenset(SYNONYM_GROUPS[0] | SYNONYM_GROUPS[1] | SYNONYM_GROUPS[2] | {"player", "rider", "skier"}),
    "animal": frozenset("dog cat cattle cow sheep goat horse bird elephant bear lion tiger".split()),
    "vehicle": frozenset(SYNONYM_GROUPS[4] | SYNONYM_GROUPS[5] | {"train", "motorcycle", "bicycle"}),
}


def singular(word: str) -> str:
    """Light English singularisation (enough for class names and short noun phrases)."""
    word = word.lower()
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("ches", "shes", "sses", "xes", "zes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def phrase_words(phrase: str, drop_stop_words: bool = True, singularize: bool = True) -> list[str]:
    """Lower-cased words of a phrase, stop words dropped, singular (``singularize``)."""
    words = [w for w in _WORD.findall(phrase.lower()) if not (drop_stop_words and w in STOP_WORDS)]
    return [singular(w) for w in words] if singularize else words


def label_alternatives(label: str, singularize: bool = True) -> list[list[str]]:
    """``"ball/sports_ball"`` -> ``[["ball"], ["sport", "ball"]]`` (singular words by default)."""
    alternatives = []
    for alternative in str(label).split("/"):
        words = _WORD.findall(alternative.lower().replace("_", " "))
        words = [singular(w) for w in words] if singularize else words
        if words:
            alternatives.append(words)
    return alternatives


class LabelSimilarity(Protocol):
    def __call__(self, phrase: str) -> np.ndarray:  # (C,) float64, one value per class
        ...


class LexicalLabelSimilarity:
    """Rule-based class-to-phrase similarity (see the module docstring for the scores)."""

    EXACT, SYNONYM, BROAD = 1.0, 0.9, 0.6

    def __init__(self, label_names: Sequence[str]) -> None:
        self.label_names = list(label_names)
        self.alternatives = [label_alternatives(name) for name in self.label_names]
        self._groups: dict[str, set[int]] = {}
        for index, group in enumerate(SYNONYM_GROUPS):
            for word in group:
                self._groups.setdefault(word, set()).add(index)
        self._cached = lru_cache(maxsize=4096)(self._compute)

    def word_match(self, label_word: str, words: frozenset[str]) -> float:
        if label_word in words:
            return self.EXACT
        groups = self._groups.get(label_word, set())
        if any(groups & self._groups.get(word, set()) for word in words):
            return self.SYNONYM
        broad = BROAD_CLASSES.get(label_word)
        if broad is not None and broad & words:
            return self.BROAD
        return 0.0

    def _compute(self, phrase: str) -> np.ndarray:
        words = frozenset(phrase_words(phrase))
        scores = np.zeros(len(self.label_names), dtype=np.float64)
        for c, alternatives in enumerate(self.alternatives):
            best = 0.0
            for alternative in alternatives:
                matches = [self.word_match(word, words) for word in alternative]
                if all(matches):
                    score = min(matches)
                else:
                    score = max(0.5 * matches[-1], 0.25 * max(matches[:-1], default=0.0))
                best = max(best, score)
            scores[c] = best
        return scores

    def __call__(self, phrase: str) -> np.ndarray:
        return self._cached(phrase)


def load_word_vectors(path: str | Path, vocabulary: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Word vectors from a GloVe-format text file (``word v1 ... vd`` per line; a word2vec header
    line ``count dim`` is skipped). Only words in ``vocabulary`` are kept when it is given."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: GloVe file not found; download e.g. glove.6B.300d.txt from "
            "https://nlp.stanford.edu/projects/glove/ and pass its path, or leave --glove out for lexical matching"
        )
    wanted = None if vocabulary is None else set(vocabulary)
    vectors: dict[str, np.ndarray] = {}
    dim = None
    with open(path, encoding="utf-8", errors="replace") as stream:
        for number, line in enumerate(stream, start=1):
            parts = line.rstrip().split(" ")
            if len(parts) < 2:
                continue
            if number == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                continue  # word2vec header
            if dim is None:
                dim = _vector_size(parts, path, number)
            word = " ".join(parts[:-dim])
            if not word or (wanted is not None and word.lower() not in wanted):
                continue
            try:
                vector = np.asarray(parts[-dim:], dtype=np.float32)
            except ValueError:
                raise ValueError(f"{path}, line {number}: expected a word and {dim} numbers") from None
            vectors.setdefault(word.lower(), vector)
    if dim is None:
        raise ValueError(f"{path}: no word vectors found (expected 'word v1 ... vd' lines)")
    return vectors


def _vector_size(parts: list[str], path: Path, number: int) -> int:
    size = 0
    for token in reversed(parts[1:]):
        try:
            float(token)
        except ValueError:
            break
        size += 1
    if size == 0:
        raise ValueError(f"{path}, line {number}: expected a word and its vector of numbers")
    return size


class GloveLabelSimilarity:
    """Cosine similarity of mean word vectors (see the module docstring)."""

    def __init__(self, label_names: Sequence[str], vectors: Mapping[str, np.ndarray]) -> None:
        self.label_names = list(label_names)
        self.vectors = vectors
        self.fallback = LexicalLabelSimilarity(label_names)
        dim = len(next(iter(vectors.values()))) if vectors else 1
        alternatives = [label_alternatives(name, singularize=False) for name in self.label_names]
        # (C, A, dim) unit vectors of every alternative; rows without a vector stay zero.
        width = max((len(a) for a in alternatives), default=1) or 1
        self._alt = np.zeros((len(self.label_names), width, dim), dtype=np.float64)
        self._alt_ok = np.zeros((len(self.label_names), width), dtype=bool)
        for c, alts in enumerate(alternatives):
            for a, words in enumerate(alts):
                mean = self._mean(words)
                if mean is not None:
                    self._alt[c, a], self._alt_ok[c, a] = mean, True
        self._cached = lru_cache(maxsize=4096)(self._compute)

    @classmethod
    def from_file(cls, path: str | Path, label_names: Sequence[str], phrases: Iterable[str] = ()) -> GloveLabelSimilarity:
        """Load only the vectors of the class words and of the given phrases' words."""
        vocabulary = {w for name in label_names for alt in label_alternatives(name, singularize=False) for w in alt}
        for phrase in phrases:
            vocabulary |= set(phrase_words(phrase, drop_stop_words=False, singularize=False))
        return cls(label_names, load_word_vectors(path, vocabulary))

    def _mean(self, words: Sequence[str]) -> np.ndarray | None:
        found = [self.vectors[w] for w in words if w in self.vectors]
        if not found:
            return None
        mean = np.mean(np.asarray(found, dtype=np.float64), axis=0)
        norm = np.linalg.norm(mean)
        return mean / norm if norm > 0 else None

    def _compute(self, phrase: str) -> np.ndarray:
        query = self._mean(phrase_words(phrase, singularize=False))
        if query is None:  # only stop words had vectors, or none at all
            query = self._mean(phrase_words(phrase, drop_stop_words=False, singularize=False))
        if query is None:
            return self.fallback(phrase)
        cosines = np.where(self._alt_ok, self._alt @ query, -1.0)  # (C, A)
        return cosines.max(axis=1) if cosines.size else np.zeros(0)

    def __call__(self, phrase: str) -> np.ndarray:
        return self._cached(phrase)


def choose_proposals(class_similarity: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per frame, the proposal whose class is most similar; ties -> higher detector score, then the
    first. ``class_similarity`` (C,), ``labels``/``scores`` (T, M) (label -1 = padding).

    Returns ``(index (T,), has_proposal (T,))``; ``index`` is 0 where a frame has no real proposal.
    """
    labels = np.asarray(labels, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    class_similarity = np.asarray(class_similarity, dtype=np.float64)
    real = labels >= 0
    if (labels >= len(class_similarity)).any():
        raise DatasetSchemaError(
            f"box_labels hold class id {int(labels.max())} but the dataset card names only {len(class_similarity)} "
            "classes (label_names)"
        )
    similarity = np.where(real, class_similarity[np.where(real, labels, 0)], -np.inf)  # (T, M)
    best = similarity.max(axis=1, keepdims=True)
    candidates = real & (similarity == best)
    tie_break = np.where(candidates, scores, -np.inf)
    index = np.argmax(tie_break, axis=1)
    return np.where(real.any(axis=1), index, 0), real.any(axis=1)


def object_similarity_tube(video: Mapping[str, Any], query: Mapping[str, Any], similarity: LabelSimilarity) -> Prediction:
    """The baseline's tube for one ``queries`` row on its ``videos`` row (contract columns)."""
    target = int(query["target"])
    entities = list(query["entities"])
    if not 0 <= target < len(entities):
        raise DatasetSchemaError(f"query {query['query_id']!r}: target {target} is not an index into its entities")
    frame_ids = np.asarray(video["frame_ids"], dtype=np.int64)
    boxes = np.asarray(video["boxes"], dtype=np.float64)
    labels = np.asarray(video["box_labels"], dtype=np.int64)
    scores = np.asarray(video["box_scores"], dtype=np.float64)
    if boxes.ndim != 3 or boxes.shape[0] != len(frame_ids) or labels.shape != boxes.shape[:2] or scores.shape != labels.shape:
        raise DatasetSchemaError(
            f"video {video['video_id']!r}: boxes {boxes.shape}, box_labels {labels.shape}, box_scores {scores.shape} "
            f"do not match its {len(frame_ids)} frame_ids"
        )
    index, has_proposal = choose_proposals(similarity(entities[target]), labels, scores)
    chosen = boxes[np.arange(len(frame_ids)), index]  # (T, 4)
    full_frame = np.array([0.0, 0.0, float(video["width"]), float(video["height"])])
    chosen = np.where(has_proposal[:, None], chosen, full_frame)
    begin, end = (int(v) for v in video["segment"])
    return Prediction(str(query["query_id"]), (begin, end), frame_ids, chosen)


_BASELINE_VIDEO_COLUMNS = ["video_id", "width", "height", "segment", "frame_ids", "boxes", "box_scores", "box_labels"]
_BASELINE_QUERY_COLUMNS = ["query_id", "video_id", "entities", "target"]


def object_similarity_predictions(
    split: Any, glove_path: str | Path | None = None, progress: bool = False
) -> dict[str, Prediction]:
    """The object-similarity baseline on every query of a ``StvgSplit`` -> ``{query_id: Prediction}``.

    Reads only the proposal columns (never region/frame features, never ground truth). Each clip is
    read once for all its queries.
    """
    missing = [c for c in _BASELINE_VIDEO_COLUMNS if c not in split.videos.column_names]
    if missing:
        raise DatasetSchemaError(
            f"the object-similarity baseline needs detector proposals, but the videos config lacks {missing} "
            "(was the dataset converted with --no-features?)"
        )
    label_names = list(split.metadata.get("label_names") or [])
    if not label_names:
        raise DatasetSchemaError("the dataset card names no detector classes (stvg_vem.label_names)")
    queries = split.queries.select_columns(_BASELINE_QUERY_COLUMNS).to_list()
    if glove_path is not None:
        phrases = {q["entities"][q["target"]] for q in queries if 0 <= q["target"] < len(q["entities"])}
        similarity: LabelSimilarity = GloveLabelSimilarity.from_file(glove_path, label_names, phrases)
    else:
        similarity = LexicalLabelSimilarity(label_names)
    by_video: dict[str, list[dict[str, Any]]] = {}
    for query in queries:
        by_video.setdefault(query["video_id"], []).append(query)
    videos = split.videos.select_columns(_BASELINE_VIDEO_COLUMNS).with_format("numpy")
    positions = {vid: i for i, vid in enumerate(split.videos["video_id"])}
    unknown = [vid for vid in by_video if vid not in positions]
    if unknown:
        raise DatasetSchemaError(f"queries refer to video_id(s) {unknown[:5]} that are not in the videos config")
    results: dict[str, Prediction] = {}
    items: Iterable[str] = by_video
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(list(by_video), desc="object-similarity baseline", unit="clip")
    for video_id in items:
        video = videos[positions[video_id]]
        for query in by_video[video_id]:
            results[query["query_id"]] = object_similarity_tube(video, query, similarity)
    # Keep the split's query order.
    return {q["query_id"]: results[q["query_id"]] for q in queries}


def baseline_predictions(name: str, split: Any, glove_path: str | Path | None = None, progress: bool = False) -> dict[str, Prediction]:
    """Dispatch by baseline name (``BASELINES``)."""
    if name == "object-similarity":
        return object_similarity_predictions(split, glove_path=glove_path, progress=progress)
    raise ValueError(f"unknown baseline {name!r}; choose one of {BASELINES}")


__all__ = [
    "BASELINES",
    "GloveLabelSimilarity",
    "LexicalLabelSimilarity",
    "baseline_predictions",
    "choose_proposals",
    "load_word_vectors",
    "object_similarity_predictions",
    "object_similarity_tube",
]
