"""The object-similarity baseline (paper Table 1, row 1) on made-up data with hand-expected choices."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _evaluation_data import HEIGHT, WIDTH, query_row, video_row, write_dataset

import evaluate_stvg
from stvg_data.baselines import (
    GloveLabelSimilarity,
    LexicalLabelSimilarity,
    choose_proposals,
    load_word_vectors,
    object_similarity_predictions,
    singular,
)
from stvg_data.dataset_folder import StvgSplit, load_stvg_split
from stvg_data.schema import DatasetSchemaError

LABELS = ["adult", "child", "dog", "ball/sports_ball", "car"]
FRAMES = [0, 6, 12]
# proposal m of frame t: box [10 m + t, 0, 10 m + t + 5, 5]
BOXES = np.array([[[10 * m + t, 0, 10 * m + t + 5, 5] for m in range(4)] for t in range(3)], np.float32)
PROPOSAL_LABELS = np.array([[0, 2, 3, 4], [2, 2, 1, -1], [-1, -1, -1, -1]], np.int32)
SCORES = np.array([[0.9, 0.5, 0.6, 0.8], [0.3, 0.7, 0.9, 0.99], [0.1, 0.2, 0.3, 0.4]], np.float32)


def box(t, m):
    return BOXES[t, m].tolist()


FULL_FRAME = [0.0, 0.0, float(WIDTH), float(HEIGHT)]


def dataset(root, with_features=True, queries=None):
    videos = [video_row("c0", FRAMES, (0, 18), boxes=BOXES, labels=PROPOSAL_LABELS, scores=SCORES, fps=30.0)]
    queries = queries or [
        query_row("dog", "c0", (0, 12), {0: box(0, 1), 6: box(1, 1)}, entities=["the brown dogs", "a ball"]),
        query_row("man", "c0", (0, 18), {0: box(0, 0)}, entities=["a man"]),
        query_row("ball", "c0", (6, 18), {6: box(1, 2)}, entities=["the boy", "the ball"], target=1,
                  qtype="interrogative"),
        query_row("boy", "c0", (0, 18), {0: box(0, 0)}, entities=["the boy", "the ball"], target=0),
        query_row("hound", "c0", (0, 12), {0: box(0, 1)}, entities=["a hound"]),
    ]
    return write_dataset(root, videos, queries, label_names=LABELS, with_features=with_features)


# ---------------------------------------------------------------------------------------------
# Similarity of classes to a phrase
# ---------------------------------------------------------------------------------------------


def test_singular():
    assert [singular(w) for w in ["dogs", "buses", "puppies", "people", "children", "glasses", "grass", "bus"]] == [
        "dog", "bus", "puppy", "person", "child", "glass", "grass", "bus"]


@pytest.mark.parametrize(
    ("phrase", "expected"),
    [
        # adult child dog ball/sports_ball car person traffic_light
        ("the brown dogs", [0, 0, 1, 0, 0, 0, 0]),
        ("a man", [0.9, 0, 0, 0, 0, 0.6, 0]),  # synonym of adult; a kind of person
        ("the kids", [0, 0.9, 0, 0, 0, 0.6, 0]),
        ("the red ball", [0, 0, 0, 1, 0, 0, 0]),  # the "ball" alternative matches whole
        ("a sports car", [0, 0, 0, 0.25, 1, 0, 0]),  # only the non-head word of "sports_ball"
        ("the traffic light", [0, 0, 0, 0, 0, 0, 1]),
        ("the light", [0, 0, 0, 0, 0, 0, 0.5]),  # head word only
        ("a bicycle", [0, 0, 0, 0, 0, 0, 0]),
    ],
)
def test_lexical_similarity(phrase, expected):
    similarity = LexicalLabelSimilarity([*LABELS, "person", "traffic_light"])
    np.testing.assert_allclose(similarity(phrase), expected)


def test_choose_proposals_vectorised_with_ties_and_padding():
    class_similarity = np.array([0.2, 1.0, 1.0])
    labels = np.array([[0, 1, 2, -1], [-1, -1, -1, -1], [0, 0, 0, 0]])
    scores = np.array([[0.9, 0.1, 0.4, 1.0], [0.9, 0.9, 0.9, 0.9], [0.5, 0.7, 0.7, 0.1]])
    index, has = choose_proposals(class_similarity, labels, scores)
    # frame 0: classes 1 and 2 tie at 1.0 -> higher score (0.4, proposal 2); padding (score 1.0) never wins
    # frame 1: only padding; frame 2: all tie -> highest score 0.7, first of the two
    assert index.tolist() == [2, 0, 1] and has.tolist() == [True, False, True]
    with pytest.raises(DatasetSchemaError, match="class id 5"):
        choose_proposals(class_similarity, np.array([[5]]), np.array([[1.0]]))


# ---------------------------------------------------------------------------------------------
# The baseline on a dataset
# ---------------------------------------------------------------------------------------------


EXPECTED_LEXICAL = {
    "dog": [box(0, 1), box(1, 1), FULL_FRAME],  # frame 6: two dogs, the higher score (0.7) wins
    "man": [box(0, 0), box(1, 2), FULL_FRAME],  # adult 0.9; frame 6 has no adult -> best real score
    "ball": [box(0, 2), box(1, 2), FULL_FRAME],  # target 1 "the ball"; frame 6 has no ball
    "boy": [box(0, 0), box(1, 2), FULL_FRAME],  # no child on frame 0 -> best score (adult 0.9)
    "hound": [box(0, 0), box(1, 2), FULL_FRAME],  # no lexical match anywhere -> detector score
}


def test_object_similarity_hand_expected_choices(tmp_path):
    split = load_stvg_split(dataset(tmp_path / "data"), "test")
    predictions = object_similarity_predictions(split)
    assert list(predictions) == ["dog", "man", "ball", "boy", "hound"]
    for query_id, expected in EXPECTED_LEXICAL.items():
        prediction = predictions[query_id]
        assert prediction.sted == (0, 18)  # the whole clip, segment end exclusive
        assert prediction.frame_ids.tolist() == FRAMES
        np.testing.assert_allclose(prediction.boxes, expected, err_msg=query_id)


def test_object_similarity_does_not_need_ground_truth(tmp_path):
    split = load_stvg_split(dataset(tmp_path / "data"), "test")
    blind = StvgSplit(split.videos, split.queries.remove_columns(["gt_sted", "gt_frame_ids", "gt_boxes"]), split.metadata)
    assert object_similarity_predictions(blind)["dog"].boxes.tolist() == object_similarity_predictions(split)["dog"].boxes.tolist()


GLOVE = """7 3
dog 1 0 0
hound 0.9 0.1 0
car 0 1 0
adult 0 0 1
child 0 0.2 0.9
ball 0.1 0.9 0.1
the 0.5 0.5 0.5
"""


def test_glove_similarity(tmp_path):
    path = tmp_path / "vectors.txt"
    path.write_text(GLOVE)
    vectors = load_word_vectors(path, vocabulary={"dog", "hound"})
    assert set(vectors) == {"dog", "hound"} and vectors["hound"].tolist() == pytest.approx([0.9, 0.1, 0.0])
    similarity = GloveLabelSimilarity.from_file(path, LABELS, phrases=["a hound"])
    scores = similarity("a hound")
    assert int(np.argmax(scores)) == LABELS.index("dog")
    assert scores[2] == pytest.approx(0.9 / np.sqrt(0.82))
    # "sports" has no vector: the alternative falls back to the words that have one ("ball")
    assert scores[3] == pytest.approx((0.09 + 0.09) / (np.sqrt(0.82) * np.sqrt(0.83)))
    # a phrase without any known word falls back to the lexical score
    np.testing.assert_allclose(similarity("zebras"), LexicalLabelSimilarity(LABELS)("zebras"))
    with pytest.raises(FileNotFoundError, match="GloVe"):
        load_word_vectors(tmp_path / "absent.txt")


def test_cli_baseline_lexical_and_glove(tmp_path, capsys):
    data = dataset(tmp_path / "data")
    out = tmp_path / "lexical"
    assert evaluate_stvg.main(["--dataset", str(data), "--split", "test", "--output-dir", str(out),
                               "--baseline", "object-similarity", "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    records = {r["query_id"]: r for r in json.loads((out / "predictions.json").read_text())}
    assert records["dog"] == {"query_id": "dog", "sted": [0, 18],
                              "boxes": {"0": box(0, 1), "6": box(1, 1), "12": FULL_FRAME}}
    # dog: tIoU 12/18, vIoU: union {0, 6, 12}, both GT frames hit -> 2/3
    # man, boy: tIoU 1, GT box on frame 0 only (frames 6, 12 lack one: IoU 0) -> 1/3
    # ball: tIoU 12/18, GT on 6 hit (box(1, 2)) -> 1/3 (union 3 frames: 0, 6, 12)
    # hound: tIoU 12/18, GT on frame 0 is box(0, 1) but the baseline chose box(0, 0) -> IoU 0
    declarative = metrics["declarative"]
    assert declarative["num_queries"] == 4
    assert declarative["m_tIoU"] == pytest.approx((12 / 18 + 1 + 1 + 12 / 18) / 4)
    assert declarative["m_vIoU"] == pytest.approx((2 / 3 + 1 / 3 + 1 / 3 + 0) / 4)
    assert declarative["vIoU@0.3"] == pytest.approx(3 / 4) and declarative["vIoU@0.5"] == pytest.approx(1 / 4)
    assert metrics["interrogative"]["m_vIoU"] == pytest.approx(1 / 3)
    assert "overall" in capsys.readouterr().out

    glove = tmp_path / "vectors.txt"
    glove.write_text(GLOVE)
    out = tmp_path / "glove"
    assert evaluate_stvg.main(["--dataset", str(data), "--split", "test", "--output-dir", str(out),
                               "--baseline", "object-similarity", "--glove", str(glove), "--no-progress"]) == 0
    records = {r["query_id"]: r for r in json.loads((out / "predictions.json").read_text())}
    assert records["hound"]["boxes"]["0"] == box(0, 1)  # the dog, thanks to the vectors


def test_baseline_needs_proposals(tmp_path, capsys):
    split = load_stvg_split(dataset(tmp_path / "data", with_features=False), "test")
    with pytest.raises(DatasetSchemaError, match="--no-features"):
        object_similarity_predictions(split)
    out = tmp_path / "e"
    assert evaluate_stvg.main(["--dataset", str(tmp_path / "data"), "--split", "test", "--output-dir", str(out),
                               "--baseline", "object-similarity"]) == 2
    assert "--no-features" in capsys.readouterr().err and not out.exists()
