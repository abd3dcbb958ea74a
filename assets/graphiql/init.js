// Mounts GraphiQL on the page; a file of its own so the page needs no inline script.
(function () {
  var defaultQuery = [
    '# Link a contact by email and/or phone number.',
    '# Press the run button (or Ctrl-Enter) to execute.',
    'mutation {',
    '  identify(',
    '    input: {',
    '      email: "lorraine@hillvalley.edu"',
    '      phoneNumber: "123456"',
    '    }',
    '  ) {',
    '    primaryContactId',
    '    emails',
    '    phoneNumbers',
    '    secondaryContactIds',
    '  }',
    '}',
    ''
  ].join('\n');

  var fetcher = GraphiQL.createFetcher({ url: '/graphql' });
  var root = ReactDOM.createRoot(document.getElementById('graphiql'));
  root.render(
    React.createElement(GraphiQL, {
      fetcher: fetcher,
      defaultQuery: defaultQuery,
      defaultEditorToolsVisibility: false
    })
  );
})();
