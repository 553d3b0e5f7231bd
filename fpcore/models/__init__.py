"""Models: the linear-surrogate RNNs of paper C (:mod:`fpcore.models.surrogates`) and the language model
whose recurrent layers are evaluated by a chosen fixed-point method (:mod:`fpcore.models.lm`).

>>> from fpcore.models import SurrogateStack
>>> rnn = SurrogateStack("gilr-lstm", input_size=16, hidden_size=32, num_layers=2)   # doctest: +SKIP
>>> y, state = rnn(x)              # parallel: one scan per recurrence        # doctest: +SKIP
>>> y_seq, _ = rnn.sequential(x)   # the step-by-step oracle, same numbers    # doctest: +SKIP
"""

from fpcore.models.lm import RNNLM
from fpcore.models.surrogates import GILR, GILRLSTM, LAYERS, QRNN, SRU, SurrogateStack, make_layer

__all__ = ["RNNLM", "GILR", "GILRLSTM", "SRU", "QRNN", "SurrogateStack", "LAYERS", "make_layer"]
