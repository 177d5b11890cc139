-- The Prefect server's database beside MLflow's (POSTGRES_DB creates chemgen_mlflow); run once, on an empty volume.
CREATE DATABASE chemgen_prefect OWNER chemgen;
