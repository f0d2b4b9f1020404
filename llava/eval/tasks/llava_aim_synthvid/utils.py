"""Document functions of the llava_aim_synthvid tasks (synthetic clips, offline)."""

import re

from llava.eval.synthetic import LETTERS, ensure_video

POST_PROMPT = "Answer with the option's letter from the given choices directly."


def doc_to_visual(doc):
    # Video tasks hand the model an absolute file path; the clip is written on first use.
    return [str(ensure_video(doc["video"]))]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    options = "\n".join(f"{letter}. {option}" for letter, option in zip(LETTERS, doc["options"]))
    return f"{doc['question']}\n{options}\n{POST_PROMPT}"


def doc_to_choice(doc):
    return list(LETTERS[: len(doc["options"])])


def extract_letter(response):
    """The first standalone option letter in a free-form answer ('' when there is none)."""
    match = re.search(r"\b([A-D])\b", response or "")
    return match.group(1) if match else ""


def process_results(doc, results):
    predicted = extract_letter(results[0])
    return {"accuracy": float(predicted == doc["answer"])}


def color_questions(dataset):
    """Only the colour questions: the image variant shows one frame, which has no direction."""
    return dataset.filter(lambda doc: doc["doc_id"].endswith("_color"))


def doc_to_image(doc):
    # The image variant: the clip's middle frame as a PIL image (as image tasks hand them over).
    from PIL import Image

    from llava.video import load_video

    frames = load_video(ensure_video(doc["video"]), 3)
    return [Image.fromarray(frames[1])]
