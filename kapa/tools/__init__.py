"""Tools beside the system: the load generator, the sample app and the chart generator (a developer command
over a checkout). Nothing in the components or the local mode imports them."""
