"""The words of the demo's `report.md` around its tables (see `report.py` for the numbers)."""
from __future__ import annotations


def render(res, tables: dict, figures: dict, environment: str) -> str:
    steps = res.steps or {}
    res_pope = tables.get("pope_items", "")
    timings = "\n".join(f"| {k} | {v:.0f} s | {res.cpu[k]:.0f} s |" if k in res.cpu else f"| {k} | {v:.0f} s | |"
                        for k, v in res.timings.items())
    probe_note = ("Linear probes (closed-form ridge classifiers) read each region's attribute from the "
                  "hidden state at that region's visual position; fit on half of the held-out images, "
                  "scored on the other half (accuracy %, mean ± std over seeds). `projector` is what the "
                  "LLM is given; `layer k` the output of LLM layer k (the last one after the final norm).")
    sections = [f"""# victor demo: stage 1.5 (ViCToR) vs plain caption pretraining, in miniature, with controls

All arms start from the same stage-1 checkpoint; seed s of every arm shares the data order and
mask seed (paired by seed). Stage 1.5 runs {steps.get('stage15', '?')} steps, stage 2
{steps.get('stage2', '?')}. Arms and controls:

- **baseline**: stage 1.5 is plain detailed-caption training; **victor**: stage 1.5 with the
  visual token pool, masking, matching and reconstruction loss; both followed by the same stage 2;
- **baseline[seed+100]** (negative control): the baseline under other seeds (both stages);
  it must come out equal to the baseline;
- **baseline[stage 2 x0.25]**, **baseline[stage 2 x0.5]** (positive control, a dose ladder): the
  baseline's stage 1.5, then stage 2 with a quarter and half the steps (each its own cosine
  schedule, same data order); more stage 2 is known to be better, so the ladder must rise with
  the dose and "baseline vs baseline[stage 2 x0.25]" must be resolved as better.

Precision: {res.precision}, the same for every stage of every arm (it is part of each stage's
hash, so a re-run in another precision trains afresh).

Multiple choice and POPE are scored by likelihood (`victor eval --scoring likelihood`): the
option letter (or option text, by mean token log-likelihood) with the highest log-likelihood,
"yes" against "no". Open questions (GQA format) are scored by greedy generation + exact match
and by the gold answer's mean token log-likelihood (nats per token; higher is better). POPE's
signed margin is log p(yes) - log p(no), with the sign of the right answer (nats; higher is
better): POPE's labels are balanced, so a model's constant leaning towards "yes" or "no"
cancels in it, while it moves accuracy to 50% and the yes-ratio to 0 or 100%.
Fine-detail questions ask for what stage-1 captions (colours and shapes only) never state, about
an object the model has to find by its colour and shape: "Is the red circle small or large?"
(`val/fine.jsonl`, one per image, small and large balanced); each is scored by likelihood as a
choice between the two answers (the higher mean token log-likelihood), so chance is 50%. Stage 2
asks the same kind of question about training images; stage 1.5's detailed captions state sizes.
Mean ± std over {res.seeds} seed(s); rates in %. MMBench accuracy is the mean over questions
of the share of a question's circular copies answered right. POPE's three splits share their
positive questions ({res_pope}); pooled POPE accuracy and margin count each distinct question once,
and POPE's AUC is the ROC AUC of log p(yes) - log p(no) (0.5: no information, whatever the
model's yes-bias); the per-split table is below.

{tables['headline']}

Chance: MMBench 25% (4 options; existence questions with 2 options: 50%), POPE accuracy 50%,
fine-detail accuracy 50%.

## Verdict

Declared in `victor/demo/declared.py` before the run (measure, direction, minimum effect of
interest, control criteria); the verdict on the arms is printed only if both controls pass.

{tables['verdicts']}

## Paired comparisons

Difference = first arm minus second (the reference), per question, averaged over questions and seeds.
Two 95% intervals: a bootstrap that resamples questions and seeds (4000 replicates), and a
Student-t interval over the {res.seeds} per-seed differences (seed-to-seed noise, which the
bootstrap over questions understates when seeds are few); p (seeds) is the paired t-test over
seeds, Holm p its Holm adjustment over the secondary measures of each arm comparison (the primary
measure is not adjusted: it was declared alone); MDE is the minimum detectable effect of that
t-test at 80% power. Verdict: "better" / "worse" only when **both** intervals exclude 0, else
"no difference resolved".

{tables['comparisons']}

## Floors of the primary measure

Each arm scored on the same open questions with every image swapped for another question's image
(a fixed derangement, the same for every arm): what the arm gets from the question text and the
answer prior alone. An arm is above its floor when both intervals exclude 0.

{tables['floors']}

## POPE per split

{tables['pope']}

## What this instrument can detect

{tables['resolution']}

## Linear probes of the visual positions

{probe_note}

{tables['probe']}

{tables['probe_comparisons']}
"""]
    if tables["recon"]:
        sections.append(f"""## The stage-1.5 objective on held-out images

SmoothL1 error (beta 0.01, mean over channels) of reconstructing the projector's normalised
visual tokens from the LLM's final hidden states, on masked and visible positions of the
held-out images (75% masked, replaced by matched pool rows). `fitted`: a linear head fitted in
closed form (least squares) on the frozen hidden states of as many training images as the victor
head saw in stage 1.5 (steps x batch), the same for every arm; `own`: the head victor trained in
stage 1.5;
`constant`: always predicting the mean target; `relative`: fitted error / constant masked error
(each arm reconstructs its own projector's tokens, and stage 1.5 moves the projectors
differently, so raw errors are on different scales; the verdict uses both). The baseline has no
pool: it gets one seeded as stage 1.5 seeds one. Lower is better.

{tables['recon']}

Masking-information check (held-out images): `replacement distance` is the mean squared distance
between a masked token and the pool row that replaced it, divided by the mean squared distance
between a masked token and the mean token (0: the replacement is a copy and the masking removes
nothing; 1: it carries as little as the mean token); `replacement cosine` their cosine; the heads'
masked error over the mean predictor's (< 1: the head does better than always predicting the mean
target). The masking "removes information" when the replacement distance is at least 0.5
(`victor.demo.recon.REMOVES_INFORMATION`).

{tables['mask_info']}

{tables['recon_comparisons']}
""")
    if tables["efficiency"]:
        sections.append(f"""## Sample efficiency

Stage 2 on a nested random share of its records (same number of steps), after each arm's
stage 1.5; likelihood-scored: mean [95% t-interval over seeds], and victor vs baseline on the
primary measure at each share.

{tables['efficiency']}
""")
    figure_lines = "\n".join(f"![{name}]({path})" for name, path in figures.items())
    sections.append(f"""## Accuracy per question type

MMBench by likelihood (letter), open questions by generation (exact match), fine-detail questions
(`gqa_fine`) by likelihood over their two choices; 'majority answer': always giving the type's most
frequent answer (fine-detail questions: chance, 50%); 'LLM reading the true scene': the pretrained
tiny LLM given each image's ground-truth scene slots instead of visual tokens
(`victor.tiny.pretrain.slot_reader_accuracy`), what the LLM itself can answer: a ceiling.

{tables['per_type']}

## Figures

{figure_lines}

## How this was made

- command: `{res.command}` (preset `{res.preset}`, precision {res.precision})
- {environment}
- world: `{res.world.root}`; stage 1: `{res.stage1}`
- every stage directory holds `victor_stage.json` (all arguments, loss history) and a stock
  LLaVA checkpoint; predictions and summaries are in `stages/stage2-*/eval/`, probe results in
  `probe.json`, reconstruction in `recon.json` beside the checkpoint; `results.json` holds every
  number of this report

| phase | wall time | CPU time (all threads) |
|---|---|---|
{timings}
""")
    return "\n".join(sections)
