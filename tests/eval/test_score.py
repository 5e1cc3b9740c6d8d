"""`score`: forced reply prefixes, several samples per problem, and the share of replies that think first."""

from __future__ import annotations

import torch

from diji.data.tokenizer import Tokenizer
from diji.eval.task import Example, Grade, Task, score
from diji.model.transformer import ModelConfig, Transformer


class StartsWithThink(Task):
    """Correct iff the reply reasons first — so accuracy is the think share, and forcing `<think>` is 100 %."""

    name = "starts-with-think"

    def examples(self, split, n, seed=0):
        return [Example(id=str(i), messages=({"role": "user", "content": f"q{i}"},), answer="") for i in range(n)]

    def grade(self, example, completion):
        return Grade(completion.startswith("<think>"), None, False)


def _model(data_dir):
    model = Transformer(ModelConfig(vocab_size=300, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                    num_key_value_heads=1, intermediate_size=64, max_position_embeddings=128))
    model.init_weights(seed=0)
    return model.eval(), Tokenizer.from_file(data_dir / "tokenizer.json")


def test_a_forced_prefix_is_written_first_and_graded_with_the_reply(data_dir):
    model, tok = _model(data_dir)
    task = StartsWithThink()
    ex = task.examples("test", 6)
    free = score(model, tok, task, ex, max_new_tokens=4)
    forced = score(model, tok, task, ex, max_new_tokens=4, prefix="<think>")
    assert forced.accuracy == 1.0 and forced.think_share == 1.0
    assert all(c.startswith("<think>") for c in forced.completions)
    assert free.think_share == free.accuracy < 1.0  # a random model does not emit <think> on its own


def test_samples_per_problem_give_mean_accuracy_and_pass_at_k(data_dir):
    model, tok = _model(data_dir)
    torch.manual_seed(0)

    class OddLength(StartsWithThink):
        def grade(self, example, completion):
            return Grade(len(completion) % 2 == 1, None, False)

    task = OddLength()
    ex = task.examples("test", 8)
    s = score(model, tok, task, ex, max_new_tokens=6, temperature=1.0, samples=4, seed=3)
    assert len(s.completions) == len(s.grades) == 32
    by_problem = [[g.correct for g in s.grades[i * 4 : (i + 1) * 4]] for i in range(8)]
    assert s.accuracy == sum(map(sum, by_problem)) / 32
    assert s.pass_at_k == sum(any(r) for r in by_problem) / 8
    assert 0 < s.accuracy < s.pass_at_k  # some problems were solved on some samples only
    assert score(model, tok, task, ex, max_new_tokens=6, temperature=1.0, samples=4, seed=3).completions == s.completions
