"""The bundled demo data: a synthetic customer-churn table, generated with a documented seed.

`generate_customers(n, seed)` draws customers from a fixed process: numeric, categorical, boolean
and date columns, an identifier, missing values, and a churn label from a logistic model of the
columns plus noise. The same (n, seed) always gives the same table. `shipml quickstart` writes
`customers.csv` (seed 7, 3,000 rows) for training, `labelled.csv` (seed 8, 600 rows) for
`shipml evaluate`, and `new.csv` (seed 9, 200 rows, no label) for `shipml predict`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

TRAIN_SEED, LABELLED_SEED, NEW_SEED = 7, 8, 9


def generate_customers(n: int = 3000, seed: int = TRAIN_SEED) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age = rng.normal(42, 13, n).clip(18, 90).round()
    household = rng.integers(1, 6, n)
    income = (rng.lognormal(10.6, 0.45, n) * (1 + 0.01 * (age - 40))).round(-2)
    plan = rng.choice(["basic", "standard", "premium"], n, p=[0.5, 0.35, 0.15])
    contract = rng.choice(["month-to-month", "one-year", "two-year"], n, p=[0.55, 0.25, 0.2])
    region = rng.choice(
        ["north", "south", "east", "west", "islands"], n, p=[0.3, 0.3, 0.2, 0.18, 0.02]
    )
    tenure = rng.gamma(2.0, 14, n).clip(0, 120).round()
    base_charge = {"basic": 25.0, "standard": 55.0, "premium": 95.0}
    monthly = np.array([base_charge[p] for p in plan]) + rng.normal(0, 8, n)
    support_calls = rng.poisson(1.2 + (plan == "basic") * 0.8, n)
    has_partner = rng.choice(["yes", "no"], n, p=[0.45, 0.55])
    signup = pd.Timestamp("2020-01-01") + pd.to_timedelta(rng.integers(0, 1800, n), unit="D")

    logit = (
        -1.1
        + 1.3 * (contract == "month-to-month")
        - 0.9 * (contract == "two-year")
        - 0.035 * tenure
        + 0.45 * support_calls
        + 0.012 * (monthly - 50)
        - 0.35 * (has_partner == "yes")
        - 0.25 * np.log(income / 40000)
        + 0.4 * (region == "islands")
        + rng.normal(0, 0.6, n)
    )
    churned = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "yes", "no")

    df = pd.DataFrame(
        {
            "customer_id": [f"C{seed:02d}{i:06d}" for i in range(n)],
            "age": age,
            "income": income,
            "household_size": household,
            "plan": plan,
            "contract": contract,
            "region": region,
            "tenure_months": tenure,
            "monthly_charges": monthly.round(2),
            "support_calls": support_calls,
            "has_partner": has_partner,
            "signup_date": signup.strftime("%Y-%m-%d"),
            "churned": churned,
        }
    )
    # Missing values where real customer tables have them.
    for column, share in (
        ("age", 0.05),
        ("income", 0.12),
        ("region", 0.04),
        ("monthly_charges", 0.02),
    ):
        df.loc[rng.random(n) < share, column] = np.nan
    return df


def write_demo_data(folder: Path) -> dict[str, Path]:
    """Write the three demo files into ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "train": folder / "customers.csv",
        "labelled": folder / "labelled.csv",
        "new": folder / "new.csv",
    }
    generate_customers(3000, TRAIN_SEED).to_csv(paths["train"], index=False)
    generate_customers(600, LABELLED_SEED).to_csv(paths["labelled"], index=False)
    new = generate_customers(200, NEW_SEED).drop(columns=["churned"])
    new.loc[:4, "region"] = "overseas"  # a category the model never saw: it must still predict
    new.to_csv(paths["new"], index=False)
    return paths
