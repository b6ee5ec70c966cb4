"""The few-shot exemplars: the standard problems, with this project's own worked solutions.

GSM8K uses the eight chain-of-thought problems of Wei et al. (2022); MATH the four Minerva problems
(Lewkowycz et al. 2022). The solutions and thoughts below were written for this project in the
paper's style: a short thought (what a reader would think before writing), then a step-by-step
solution ending ``The final answer is ...``. Latent mode shows the thought inside the latent span;
raw mode shows the solution alone.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Exemplar:
    """One worked problem: question, thought, step-by-step solution and final answer."""

    question: str
    thought: str
    solution: str
    answer: str


GSM8K_EXEMPLARS = (
    Exemplar(
        "There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are "
        "done, there will be 21 trees. How many trees did the grove workers plant today?",
        "The planted trees are the difference between the final and the initial count.",
        "The grove starts with 15 trees and ends with 21 trees. The workers planted 21 - 15 = 6 trees.",
        "6",
    ),
    Exemplar(
        "If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
        "Arrivals add to the cars already there.",
        "There are 3 cars at first. After 2 more arrive there are 3 + 2 = 5 cars.",
        "5",
    ),
    Exemplar(
        "Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in "
        "total?",
        "Add both amounts, then take away what was eaten.",
        "Together they had 32 + 42 = 74 chocolates. After eating 35 they have 74 - 35 = 39 left.",
        "39",
    ),
    Exemplar(
        "Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many "
        "lollipops did Jason give to Denny?",
        "What he gave away is what he lost: start minus end.",
        "Jason went from 20 lollipops to 12 lollipops, so he gave Denny 20 - 12 = 8 lollipops.",
        "8",
    ),
    Exemplar(
        "Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does "
        "he have now?",
        "Two parents give two toys each, so 4 new toys.",
        "His mom and dad gave him 2 + 2 = 4 toys. He now has 5 + 4 = 9 toys.",
        "9",
    ),
    Exemplar(
        "There were nine computers in the server room. Five more computers were installed each day, from "
        "monday to thursday. How many computers are now in the server room?",
        "Monday to Thursday is 4 days of 5 computers each.",
        "From Monday to Thursday is 4 days. They installed 4 * 5 = 20 computers. Now there are "
        "9 + 20 = 29 computers.",
        "29",
    ),
    Exemplar(
        "Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How "
        "many golf balls did he have at the end of wednesday?",
        "Subtract both losses in turn.",
        "After Tuesday he had 58 - 23 = 35 golf balls. After Wednesday he had 35 - 2 = 33 golf balls.",
        "33",
    ),
    Exemplar(
        "Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
        "Cost is quantity times price; subtract it from her money.",
        "Five bagels at $3 each cost 5 * 3 = 15 dollars. She has 23 - 15 = 8 dollars left.",
        "8",
    ),
)

MATH_EXEMPLARS = (
    Exemplar(
        "Find the domain of the expression  $\\frac{\\sqrt{x-2}}{\\sqrt{5-x}}$.",
        "Both radicands must be nonnegative and the denominator must not vanish.",
        "The numerator needs $x-2 \\ge 0$, so $x \\ge 2$. The denominator needs $5-x > 0$, because it is "
        "under a square root and cannot be zero, so $x < 5$. Together, $2 \\le x < 5$.",
        "[2,5)",
    ),
    Exemplar(
        "If $\\det \\mathbf{A} = 2$ and $\\det \\mathbf{B} = 12,$ then find $\\det (\\mathbf{A} \\mathbf{B}).$",
        "The determinant is multiplicative.",
        "Since $\\det (\\mathbf{A} \\mathbf{B}) = (\\det \\mathbf{A})(\\det \\mathbf{B})$, it equals "
        "$2 \\cdot 12 = 24$.",
        "24",
    ),
    Exemplar(
        "Terrell usually lifts two 20-pound weights 12 times. If he uses two 15-pound weights instead, how "
        "many times must Terrell lift them in order to lift the same total weight?",
        "Equate total weight lifted: weight per lift times number of lifts.",
        "Each usual lift moves $2 \\cdot 20 = 40$ pounds, so 12 lifts move $40 \\cdot 12 = 480$ pounds. "
        "Each lift with the lighter weights moves $2 \\cdot 15 = 30$ pounds, so he needs "
        "$480 / 30 = 16$ lifts.",
        "16",
    ),
    Exemplar(
        "If the system of equations\n\n\\begin{align*}\n6x-4y&=a,\\\\\n6y-9x &=b.\n\\end{align*}has a "
        "solution $(x, y)$ where $x$ and $y$ are both nonzero, find $\\frac{a}{b},$ assuming $b$ is nonzero.",
        "The second left side is a multiple of the first.",
        "Multiplying the first equation by $-\\frac{3}{2}$ gives $6y - 9x = -\\frac{3}{2}a$. The left side "
        "is that of the second equation, so $b = -\\frac{3}{2}a$ and $\\frac{a}{b} = -\\frac{2}{3}$.",
        "-\\frac{2}{3}",
    ),
)
