// Greedy and beam search over a step function: a port of runtime/decoding.py for one image.
//
// The stop rules are the Python runtime's, stated once (stopRules, stopped): a
// caption ends after the end token (kept in `tokens`), or when the chosen id has
// no word (not kept, but its log-probability counts), or after maxLength words.
// Scores add float32 log-probabilities into float64 sums in the same order as
// numpy does, and ties break the same way (lower row, then lower word id), so the
// tokens are the Python runtime's whenever the step model's numbers are.

/** id -> "end" | "no_word" for ids that end a caption. */
export function stopRules(vocabulary) {
  const rules = new Map();
  vocabulary.words.forEach((word, id) => {
    if (word === null) rules.set(id, "no_word");
  });
  if (vocabulary.endId !== null) rules.set(vocabulary.endId, "end");
  return rules;
}

function stopped(tokens, token, score, reason) {
  return { tokens: reason === "end" ? [...tokens, token] : [...tokens], logProbability: score, stopReason: reason };
}

/** Hypothesis score: total log-probability, or GNMT's length-normalised one. */
export function hypothesisScore(hyp, lengthPenalty) {
  if (lengthPenalty === null || lengthPenalty === undefined) return hyp.logProbability;
  return hyp.logProbability / ((5.0 + hyp.tokens.length) / 6.0) ** lengthPenalty;
}

function argmax(values, offset, size) {
  // numpy's argmax: the first maximum (a NaN counts as the maximum, as in numpy)
  let best = 0;
  let bestValue = values[offset];
  if (Number.isNaN(bestValue)) return 0;
  for (let i = 1; i < size; i++) {
    const v = values[offset + i];
    if (v > bestValue || Number.isNaN(v)) {
      if (Number.isNaN(v)) return i;
      best = i;
      bestValue = v;
    }
  }
  return best;
}

/** Each row's k best ids, best first, equal scores: the lower id first (capgen's TopK). */
function topK(values, offset, size, k) {
  const ids = [];
  for (let i = 0; i < size; i++) {
    const v = values[offset + i];
    if (ids.length === k && !(v > values[offset + ids[k - 1]])) continue;
    let at = ids.length === k ? k - 1 : ids.length;
    while (at > 0 && v > values[offset + ids[at - 1]]) at--;
    if (ids.length === k) ids.pop();
    ids.splice(at, 0, i);
  }
  return ids;
}

/**
 * The tutorial's argmax loop. `step(words, rows)` runs the decoder for the live
 * rows and returns log-probabilities [rows, V] as a Float32Array; `keep(parents)`
 * reorders its state. Returns [hypothesis].
 */
export async function greedySearch(model, vocabulary, maxLength) {
  const rules = stopRules(vocabulary);
  const tokens = [];
  let logProbability = 0.0;
  let word = vocabulary.firstInputId;
  for (let i = 0; i < maxLength; i++) {
    const logProbs = await model.step([word]);
    const token = argmax(logProbs, 0, vocabulary.words.length);
    logProbability += logProbs[token];
    const reason = rules.get(token);
    if (reason === undefined) {
      tokens.push(token);
      word = token;
      continue;
    }
    return [stopped(tokens, token, logProbability, reason)];
  }
  return [{ tokens, logProbability, stopReason: "max_length" }];
}

/**
 * Beam search (runtime/decoding.py `_Beam`) for one image: done when beamSize
 * hypotheses have ended or stopped; live beams at maxLength come last, unfinished.
 * Returns the nBest hypotheses, best first.
 */
export async function beamSearch(model, vocabulary, maxLength, beamSize, lengthPenalty, nBest) {
  const rules = stopRules(vocabulary);
  const size = vocabulary.words.length;
  const perRow = Math.min(beamSize + Math.min(rules.size, beamSize - 1), size);
  const ended = [];
  const halted = [];
  let rowLogp = [0.0];
  let rowTokens = [[]];
  let words = [vocabulary.firstInputId];
  for (let i = 0; i < maxLength; i++) {
    const logProbs = await model.step(words);
    const candidates = [];
    for (let row = 0; row < rowTokens.length; row++) {
      for (const token of topK(logProbs, row * size, size, perRow)) {
        candidates.push({ row, token, score: rowLogp[row] + logProbs[row * size + token] });
      }
    }
    // numpy lexsort by (-score, row, token): best first, ties to the lower row, then word.
    candidates.sort((a, b) => b.score - a.score || a.row - b.row || a.token - b.token);
    let next = [];
    for (const { row, token, score } of candidates) {
      const reason = rules.get(token);
      if (reason === undefined) {
        next.push({ row, token, score });
      } else {
        (reason === "end" ? ended : halted).push(stopped(rowTokens[row], token, score, reason));
      }
      if (ended.length + halted.length >= beamSize) {
        next = []; // done: this image's beams end here, including those kept this step
        break;
      }
      if (next.length === beamSize) break;
    }
    rowTokens = next.map(({ row, token }) => [...rowTokens[row], token]);
    rowLogp = next.map(({ score }) => score);
    words = next.map(({ token }) => token);
    if (next.length === 0) break;
    model.keep(next.map(({ row }) => row));
  }
  const byScore = (a, b) => hypothesisScore(b, lengthPenalty) - hypothesisScore(a, lengthPenalty);
  const cut = rowTokens.map((tokens, row) => ({ tokens, logProbability: rowLogp[row], stopReason: "max_length" }));
  const unfinished = [...halted, ...cut].sort(byScore);
  return [...ended.sort(byScore), ...unfinished].slice(0, nBest);
}
